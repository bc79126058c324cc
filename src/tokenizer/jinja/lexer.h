// Jinja lexer: splits a template into text and tag tokens, applying jinja2's whitespace
// control exactly as transformers configures it (trim_blocks, lstrip_blocks, `{%-`/`-%}`,
// `+%}`, newline normalisation, one trailing newline dropped) so the parser sees the final text.
#pragma once

#include <string>
#include <vector>

namespace nibble::jinja {

enum class Tok { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, Eof };

struct Token {
  Tok type;
  std::string text;  // Text: the literal text; String: the unescaped value; Name/Op/Int/Float: as written
  int line;
};

struct LexOptions {
  bool trim_blocks = true;
  bool lstrip_blocks = true;
  bool keep_trailing_newline = false;
};

// Throws FormatError ("chat template line N: ...") on an unterminated tag or string.
std::vector<Token> lex(const std::string& source, const LexOptions& opt = {});

}  // namespace nibble::jinja
