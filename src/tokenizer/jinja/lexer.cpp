// Jinja lexer. Whitespace control follows jinja2's lexer rule for rule:
//  - the text before a tag loses all trailing whitespace when the tag opens with `-`;
//  - otherwise, for block and comment tags (not `{{`) without `+`, lstrip_blocks removes the
//    spaces/tabs between the last newline (or the start of a line) and the tag;
//  - a tag closing with `-` eats all following whitespace; a block/comment tag closing plainly
//    eats one following newline (trim_blocks); `+%}` keeps it.
// "Start of a line" is jinja2's line_starting: the previous match ended with a newline.
#include "tokenizer/jinja/lexer.h"

#include <cctype>

#include "io/utf8.h"
#include "nibble/error.h"

namespace nibble::jinja {

namespace {

[[noreturn]] void lex_error(int line, const std::string& msg) {
  throw FormatError(detail::str("chat template line ", line, ": ", msg));
}

bool is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

int count_lines(const std::string& s, size_t a, size_t b) {
  int n = 0;
  for (size_t k = a; k < b && k < s.size(); ++k) n += s[k] == '\n';
  return n;
}


// jinja2 decodes string literals with Python's unicode-escape: known escapes are replaced,
// unknown ones (e.g. "\d") keep their backslash.
std::string unescape(const std::string& raw, int line) {
  std::string out;
  for (size_t k = 0; k < raw.size(); ++k) {
    char c = raw[k];
    if (c != '\\' || k + 1 >= raw.size()) {
      out += c;
      continue;
    }
    char n = raw[++k];
    auto hex = [&](int digits) {
      uint32_t cp = 0;
      for (int d = 0; d < digits; ++d) {
        if (k + 1 >= raw.size() || !std::isxdigit(static_cast<unsigned char>(raw[k + 1])))
          lex_error(line, "malformed \\x/\\u escape in string literal");
        char h = raw[++k];
        cp = cp * 16 + (std::isdigit(static_cast<unsigned char>(h)) ? h - '0' : (std::tolower(h) - 'a' + 10));
      }
      io::append_utf8(out, char32_t(cp));
    };
    switch (n) {
      case 'n':
        out += '\n';
        break;
      case 't':
        out += '\t';
        break;
      case 'r':
        out += '\r';
        break;
      case '\\':
        out += '\\';
        break;
      case '\'':
        out += '\'';
        break;
      case '"':
        out += '"';
        break;
      case 'a':
        out += '\a';
        break;
      case 'b':
        out += '\b';
        break;
      case 'f':
        out += '\f';
        break;
      case 'v':
        out += '\v';
        break;
      case '\n':
        break;  // backslash-newline continues the line
      case 'x':
        hex(2);
        break;
      case 'u':
        hex(4);
        break;
      case 'U':
        hex(8);
        break;
      case 'N':
        throw UnsupportedError(
            detail::str("chat template line ", line, ": \\N{...} escapes are not supported"));
      default:
        if (n >= '0' && n <= '7') {
          uint32_t cp = n - '0';
          for (int d = 0; d < 2 && k + 1 < raw.size() && raw[k + 1] >= '0' && raw[k + 1] <= '7'; ++d)
            cp = cp * 8 + (raw[++k] - '0');
          io::append_utf8(out, char32_t(cp));
        } else {
          out += '\\';
          out += n;
        }
    }
  }
  return out;
}

struct Lexer {
  const std::string& src;
  LexOptions opt;
  std::vector<Token> out;
  size_t pos = 0;
  int line = 1;
  bool line_starting = true;

  void emit(Tok t, std::string text, int at_line) { out.push_back({t, std::move(text), at_line}); }

  // Text before a tag at `tag_pos`, whitespace-controlled by the tag's opening modifier.
  void emit_text(size_t tag_pos, char modifier, bool lstrip_kind) {
    std::string text = src.substr(pos, tag_pos - pos);
    int text_line = line;
    line += count_lines(src, pos, tag_pos);
    if (modifier == '-') {
      size_t e = text.size();
      while (e > 0 && is_space(text[e - 1])) --e;
      text.resize(e);
    } else if (modifier != '+' && opt.lstrip_blocks && lstrip_kind) {
      size_t nl = text.rfind('\n');
      size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
      if (l_pos > 0 || line_starting) {
        bool all_ws = l_pos < text.size();
        for (size_t k = l_pos; k < text.size(); ++k) all_ws = all_ws && is_space(text[k]);
        if (all_ws) text.resize(l_pos);
      }
    }
    if (!text.empty()) emit(Tok::Text, std::move(text), text_line);
  }

  // After a tag's closing delimiter ending at `p` (exclusive), with modifier '-', '+' or 0.
  void consume_tag_end(size_t p, char modifier, bool trim_kind) {
    size_t q = p;
    if (modifier == '-') {
      while (q < src.size() && is_space(src[q])) ++q;
    } else if (modifier != '+' && trim_kind && opt.trim_blocks && q < src.size() && src[q] == '\n') {
      ++q;
    }
    line_starting = q > 0 && src[q - 1] == '\n';
    line += count_lines(src, pos, q);
    pos = q;
  }

  void run() {
    while (pos < src.size()) {
      size_t t = src.find('{', pos);
      while (t != std::string::npos && t + 1 < src.size() && src[t + 1] != '{' && src[t + 1] != '%' &&
             src[t + 1] != '#')
        t = src.find('{', t + 1);
      if (t == std::string::npos || t + 1 >= src.size()) {
        emit_text(src.size(), 0, false);
        pos = src.size();
        break;
      }
      char kind = src[t + 1];
      char modifier = (t + 2 < src.size() && (src[t + 2] == '-' || src[t + 2] == '+')) ? src[t + 2] : 0;
      emit_text(t, modifier, kind != '{');
      pos = t + 2 + (modifier ? 1 : 0);
      if (kind == '#') {
        size_t e = src.find("#}", pos);
        if (e == std::string::npos) lex_error(line, "unterminated comment");
        char m = (e > pos && (src[e - 1] == '-' || src[e - 1] == '+')) ? src[e - 1] : 0;
        consume_tag_end(e + 2, m, true);
        continue;
      }
      if (kind == '%' && try_raw()) continue;
      lex_tag(kind == '{');
    }
    emit(Tok::Eof, "", line);
  }

  // `{% raw %}...{% endraw %}`: the body is literal text.
  bool try_raw() {
    size_t p = pos;
    while (p < src.size() && is_space(src[p])) ++p;
    if (src.compare(p, 3, "raw") != 0) return false;
    size_t q = p + 3;
    while (q < src.size() && is_space(src[q])) ++q;
    char m = 0;
    if (q < src.size() && (src[q] == '-' || src[q] == '+')) m = src[q++];
    if (src.compare(q, 2, "%}") != 0) return false;
    consume_tag_end(q + 2, m, false);  // jinja2's raw_begin rule has no trim_blocks newline
    // Find `{%[-+]? endraw [-+]?%}`.
    for (size_t s = src.find("{%", pos); s != std::string::npos; s = src.find("{%", s + 2)) {
      size_t a = s + 2;
      char om = (a < src.size() && (src[a] == '-' || src[a] == '+')) ? src[a++] : 0;
      while (a < src.size() && is_space(src[a])) ++a;
      if (src.compare(a, 6, "endraw") != 0) continue;
      a += 6;
      while (a < src.size() && is_space(src[a])) ++a;
      char cm = 0;
      if (a < src.size() && (src[a] == '-' || src[a] == '+')) cm = src[a++];
      if (src.compare(a, 2, "%}") != 0) continue;
      emit_text(s, om, true);
      consume_tag_end(a + 2, cm, true);
      return true;
    }
    lex_error(line, "missing {% endraw %}");
  }

  // Expression tokens up to the closing `}}` / `%}`.
  void lex_tag(bool variable) {
    int tag_line = line;
    emit(variable ? Tok::VarBegin : Tok::BlockBegin, "", line);
    const char* close = variable ? "}}" : "%}";
    int depth = 0;  // brackets open: `}}` inside a dict literal is not the tag end
    while (true) {
      while (pos < src.size() && is_space(src[pos])) {
        line += src[pos] == '\n';
        ++pos;
      }
      if (pos >= src.size()) lex_error(tag_line, variable ? "unterminated {{ tag" : "unterminated {% tag");
      char c = src[pos];
      if ((c == '-' || c == '+') && src.compare(pos + 1, 2, close) == 0 && depth == 0) {
        emit(variable ? Tok::VarEnd : Tok::BlockEnd, "", line);
        consume_tag_end(pos + 3, c, !variable);
        return;
      }
      if (src.compare(pos, 2, close) == 0 && depth == 0) {
        emit(variable ? Tok::VarEnd : Tok::BlockEnd, "", line);
        consume_tag_end(pos + 2, 0, !variable);
        return;
      }
      if (std::isalpha(static_cast<unsigned char>(c)) || c == '_') {
        size_t e = pos;
        while (e < src.size() && (std::isalnum(static_cast<unsigned char>(src[e])) || src[e] == '_')) ++e;
        emit(Tok::Name, src.substr(pos, e - pos), line);
        pos = e;
      } else if (std::isdigit(static_cast<unsigned char>(c))) {
        lex_number();
      } else if (c == '\'' || c == '"') {
        size_t e = pos + 1;
        while (e < src.size() && src[e] != c) e += src[e] == '\\' ? 2 : 1;
        if (e >= src.size()) lex_error(line, "unterminated string literal");
        emit(Tok::String, unescape(src.substr(pos + 1, e - pos - 1), line), line);
        line += count_lines(src, pos, e);
        pos = e + 1;
      } else {
        static const char* two[] = {"//", "**", "==", "!=", "<=", ">="};
        std::string op;
        for (const char* t : two)
          if (src.compare(pos, 2, t) == 0) op = t;
        if (op.empty()) {
          if (std::string("+-*/%~<>=()[]{},.:|;!").find(c) == std::string::npos)
            lex_error(line, detail::str("unexpected character '", c, "'"));
          op = std::string(1, c);
        }
        if (op == "(" || op == "[" || op == "{") ++depth;
        if ((op == ")" || op == "]" || op == "}") && depth > 0) --depth;
        emit(Tok::Op, op, line);
        pos += op.size();
      }
    }
  }

  void lex_number() {
    size_t e = pos;
    auto digits = [&] {
      while (e < src.size() &&
             (std::isdigit(static_cast<unsigned char>(src[e])) ||
              (src[e] == '_' && e + 1 < src.size() && std::isdigit(static_cast<unsigned char>(src[e + 1])))))
        ++e;
    };
    digits();
    bool is_float = false;
    if (e + 1 < src.size() && src[e] == '.' && std::isdigit(static_cast<unsigned char>(src[e + 1]))) {
      ++e;
      digits();
      is_float = true;
    }
    if (e < src.size() && (src[e] == 'e' || src[e] == 'E')) {
      size_t f = e + 1;
      if (f < src.size() && (src[f] == '+' || src[f] == '-')) ++f;
      if (f < src.size() && std::isdigit(static_cast<unsigned char>(src[f]))) {
        e = f;
        digits();
        is_float = true;
      }
    }
    std::string text;
    for (size_t k = pos; k < e; ++k)
      if (src[k] != '_') text += src[k];
    emit(is_float ? Tok::Float : Tok::Int, text, line);
    pos = e;
  }
};

}  // namespace

std::vector<Token> lex(const std::string& source, const LexOptions& opt) {
  // jinja2 normalises \r\n and \r to \n and drops one trailing newline.
  std::string src;
  src.reserve(source.size());
  for (size_t k = 0; k < source.size(); ++k) {
    if (source[k] == '\r') {
      src += '\n';
      if (k + 1 < source.size() && source[k + 1] == '\n') ++k;
    } else {
      src += source[k];
    }
  }
  if (!opt.keep_trailing_newline && !src.empty() && src.back() == '\n') src.pop_back();
  Lexer lx{src, opt, {}};
  lx.run();
  return std::move(lx.out);
}

}  // namespace nibble::jinja
