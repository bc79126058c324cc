// Jinja parser: tokens to a statement tree, following jinja2's grammar and operator
// precedence (condexpr < or < and < not < compare < + - < ~ < * / // % < ** < unary <
// postfix/filter/test). Syntax errors throw FormatError with the template line; tags jinja2
// knows but nibble does not implement (extends, include, import, block, ...) throw
// UnsupportedError naming the tag.
#pragma once

#include <string>

#include "tokenizer/jinja/ast.h"
#include "tokenizer/jinja/lexer.h"

namespace nibble::jinja {

Body parse(const std::vector<Token>& tokens);

}  // namespace nibble::jinja
