// Python str operations on UTF-8 text, by code point: strip/split with Python's notion of
// whitespace, splitlines, case mapping (ASCII, Latin-1, Greek and Cyrillic letters), title.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace nibble::jinja {

std::u32string utf8_decode(const std::string& s);
std::string utf8_encode(const std::u32string& s);
bool py_isspace(char32_t c);

// str.strip / lstrip / rstrip; chars == nullptr strips whitespace.
std::string py_strip(const std::string& s, const std::string* chars, bool left, bool right);
// str.split / rsplit; sep == nullptr splits on whitespace runs and drops empty parts.
std::vector<std::string> py_split(const std::string& s, const std::string* sep, int64_t maxsplit,
                                  bool from_right);
std::vector<std::string> py_splitlines(const std::string& s);
std::string py_replace(const std::string& s, const std::string& old, const std::string& repl, int64_t count);
std::string py_upper(const std::string& s);
std::string py_lower(const std::string& s);
std::string py_capitalize(const std::string& s);
std::string py_title(const std::string& s);  // str.title()
bool py_islower(const std::string& s);
bool py_isupper(const std::string& s);

}  // namespace nibble::jinja
