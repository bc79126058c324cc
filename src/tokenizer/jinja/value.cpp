// Python semantics of the interpreter's values: truthiness, str()/repr(), ==, <, and
// json.dumps as transformers' tojson filter calls it. Byte-identical output to jinja2 depends
// on these matching CPython exactly (float repr, string quoting, separators).
#include "tokenizer/jinja/value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>

#include "io/pyjson.h"

namespace nibble::jinja {

RenderBudget*& current_budget() {
  thread_local RenderBudget* budget = nullptr;
  return budget;
}

void charge_step(int64_t n) {
  RenderBudget* b = current_budget();
  if (b && (b->steps += n) > kMaxRenderSteps)
    throw TemplateError(detail::str("the template runs more than ", kMaxRenderSteps,
                                    " steps (statements, loop iterations, calls)"));
}

void charge_bytes(size_t n) {
  RenderBudget* b = current_budget();
  if (!b) return;
  if (n > kMaxStringBytes)
    throw TemplateError(
        detail::str("the template makes a string of ", n, " bytes (the limit is ", kMaxStringBytes, ")"));
  b->bytes += int64_t(n);
  if (b->bytes > kMaxRenderBytes)
    throw TemplateError(detail::str("the template makes more than ", kMaxRenderBytes, " bytes of text"));
}

void check_size(double n, const char* what) {
  if (!(n <= double(kMaxStringBytes)))
    throw TemplateError(
        detail::str(what, ": a result of ", n, " bytes or items (the limit is ", kMaxStringBytes, ")"));
}

static uint32_t deeper(uint32_t deepest) {
  if (deepest + 1 > kMaxNesting)
    throw TemplateError(detail::str("lists and dicts nested deeper than ", kMaxNesting, " levels"));
  return deepest + 1;
}

uint32_t Value::nest_of(const List& items) {
  uint32_t d = 0;
  for (const Value& x : items) d = std::max(d, x.nest);
  return deeper(d);
}

uint32_t Value::nest_of(const Dict& items) {
  uint32_t d = 0;
  for (const auto& kv : items) d = std::max(d, kv.second.nest);
  return deeper(d);
}

const Value* Value::find(const std::string& key) const {
  if (kind != Kind::Map) return nullptr;
  for (const auto& [k, v] : *dict)
    if (k == key) return &v;
  return nullptr;
}

void Value::set(const std::string& key, Value v) {
  nest = std::max(nest, deeper(v.nest));
  for (auto& [k, old] : *dict)
    if (k == key) {
      old = std::move(v);
      return;
    }
  dict->emplace_back(key, std::move(v));
}

static const char kIntKey[] = "\x01int:";

std::string key_of(const Value& key) {
  if (key.is_string()) return key.s;
  if (key.kind == Kind::Int) return kIntKey + std::to_string(key.i);
  if (key.kind == Kind::Bool) return kIntKey + std::to_string(key.b ? 1 : 0);
  throw UnsupportedError(detail::str("dict keys of type ", type_name(key), " are not supported"));
}

// A key key_of stored for an integer, or a template's own string that happens to start with the
// marker (then it stays a string).
Value key_value(const std::string& stored) {
  if (stored.rfind(kIntKey, 0) == 0) {
    const char* b = stored.data() + (sizeof kIntKey - 1);
    const char* e = stored.data() + stored.size();
    int64_t i = 0;
    const auto [end, ec] = std::from_chars(b, e, i);
    if (ec == std::errc() && end == e && b != e) return Value::integer(i);
  }
  return Value::string(stored);
}

std::string type_name(const Value& v) {
  switch (v.kind) {
    case Kind::Undefined:
      return "Undefined";
    case Kind::None:
      return "NoneType";
    case Kind::Bool:
      return "bool";
    case Kind::Int:
      return "int";
    case Kind::Float:
      return "float";
    case Kind::String:
      return "str";
    case Kind::Array:
      switch (v.iter) {
        case Iter::Generator:
          return "generator";
        case Iter::Reverse:
          return "list_reverseiterator";
        case Iter::DictItems:
          return "dict_items";
        case Iter::DictKeys:
          return "dict_keys";
        case Iter::DictValues:
          return "dict_values";
        case Iter::Range:
          return "range";
        default:
          return v.is_tuple ? "tuple" : "list";
      }
    case Kind::Map:
      return v.is_namespace ? "Namespace" : "dict";
    case Kind::Callable:
      return "function";
  }
  return "?";
}

bool truthy(const Value& v) {
  switch (v.kind) {
    case Kind::Undefined:
    case Kind::None:
      return false;
    case Kind::Bool:
      return v.b;
    case Kind::Int:
      return v.i != 0;
    case Kind::Float:
      return v.f != 0;
    case Kind::String:
      return !v.s.empty();
    case Kind::Array:
      return v.single_pass() || !v.list->empty();
    case Kind::Map:
      return v.is_namespace || !v.dict->empty();
    case Kind::Callable:
      return true;
  }
  return false;
}

const Value* call_arg(CallArgs& a, size_t pos, const char* name) {
  if (pos < a.args.size()) return &a.args[pos];
  for (auto& [k, v] : a.kwargs)
    if (k == name) return &v;
  return nullptr;
}

std::string float_repr(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  return io::python_float_repr(x);  // repr(float) of finite values, as json.dumps writes them
}

static std::string repr_string(const std::string& s) {
  bool has_single = s.find('\'') != std::string::npos;
  bool has_double = s.find('"') != std::string::npos;
  char q = (has_single && !has_double) ? '"' : '\'';
  std::string out(1, q);
  for (unsigned char c : s) {
    if (c == static_cast<unsigned char>(q) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7f) {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02x", c);
      out += b;
    } else {
      out += static_cast<char>(c);
    }
  }
  out += q;
  return out;
}

std::string repr(const Value& v) {
  if (v.kind == Kind::Array && v.iter != Iter::None) {
    if (v.iter == Iter::Range && !v.s.empty()) return v.s;  // repr(range(...)), kept at creation
    if (v.single_pass() || v.iter == Iter::Range)
      throw UnsupportedError(detail::str("printing a ", type_name(v),
                                         " object (jinja2 prints its memory address or bounds); add |list"));
    Value plain = Value::make_list(*v.list);
    return type_name(v) + "(" + repr(plain) + ")";
  }
  switch (v.kind) {
    case Kind::String:
      return v.is_markup ? "Markup(" + repr_string(v.s) + ")" : repr_string(v.s);
    case Kind::Array: {
      std::string out = v.is_tuple ? "(" : "[";
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) out += ", ";
        out += repr((*v.list)[k]);
        check_size(double(out.size()), "repr");
      }
      if (v.is_tuple && v.list->size() == 1) out += ",";
      return out + (v.is_tuple ? ")" : "]");
    }
    case Kind::Map: {
      if (v.is_namespace) return "<Namespace>";
      std::string out = "{";
      bool first = true;
      for (const auto& [k, x] : *v.dict) {
        if (!first) out += ", ";
        first = false;
        out += repr(key_value(k)) + ": " + repr(x);
        check_size(double(out.size()), "repr");
      }
      return out + "}";
    }
    default:
      return to_str(v);
  }
}

std::string to_str(const Value& v) {
  switch (v.kind) {
    case Kind::Undefined:
      return "";
    case Kind::None:
      return "None";
    case Kind::Bool:
      return v.b ? "True" : "False";
    case Kind::Int:
      return std::to_string(v.i);
    case Kind::Float:
      return float_repr(v.f);
    case Kind::String:
      return v.s;
    case Kind::Callable:
      return "<function>";
    default:
      return repr(v);
  }
}

double as_double(const Value& v, const char* what) {
  switch (v.kind) {
    case Kind::Int:
      return static_cast<double>(v.i);
    case Kind::Float:
      return v.f;
    case Kind::Bool:
      return v.b ? 1 : 0;
    default:
      throw TemplateError(detail::str(what, ": expected a number, got ", type_name(v)));
  }
}

bool equals(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.kind != Kind::Float && b.kind != Kind::Float) {
      int64_t x = a.kind == Kind::Bool ? a.b : a.i, y = b.kind == Kind::Bool ? b.b : b.i;
      return x == y;
    }
    return as_double(a, "==") == as_double(b, "==");
  }
  if (a.kind != b.kind) return false;
  if (a.kind == Kind::Array && (a.iter != Iter::None || b.iter != Iter::None)) {
    if (a.iter != b.iter) return false;
    if (a.single_pass()) return a.list == b.list;
  }
  switch (a.kind) {
    case Kind::Undefined:
    case Kind::None:
      return true;
    case Kind::String:
      return a.s == b.s;
    case Kind::Array: {
      if (a.is_tuple != b.is_tuple || a.list->size() != b.list->size()) return false;
      for (size_t k = 0; k < a.list->size(); ++k)
        if (!equals((*a.list)[k], (*b.list)[k])) return false;
      return true;
    }
    case Kind::Map: {
      if (a.is_namespace || b.is_namespace) return a.dict == b.dict;
      if (a.dict->size() != b.dict->size()) return false;
      for (const auto& [k, x] : *a.dict) {
        const Value* y = b.find(k);
        if (!y || !equals(x, *y)) return false;
      }
      return true;
    }
    case Kind::Callable:
      return a.fn == b.fn;
    default:
      return false;
  }
}

bool less(const Value& a, const Value& b) {
  if (a.is_number() && b.is_number()) {
    if (a.kind == Kind::Int && b.kind == Kind::Int) return a.i < b.i;
    return as_double(a, "<") < as_double(b, "<");
  }
  if (a.is_string() && b.is_string()) return a.s < b.s;  // UTF-8 byte order = code point order
  if (a.is_list() && b.is_list() && a.is_tuple == b.is_tuple && a.iter == Iter::None &&
      b.iter == Iter::None) {
    size_t n = std::min(a.list->size(), b.list->size());
    for (size_t k = 0; k < n; ++k) {
      const Value &x = (*a.list)[k], &y = (*b.list)[k];
      if (!equals(x, y)) return less(x, y);
    }
    return a.list->size() < b.list->size();
  }
  throw TemplateError(
      detail::str("'<' not supported between instances of '", type_name(a), "' and '", type_name(b), "'"));
}

template <typename J>
static Value from_json_any(const J& j, uint32_t depth = 0) {
  // Checked on the way down: the recursion itself must not go deeper than a Value may nest.
  if (depth > kMaxNesting)
    throw TemplateError(detail::str("chat template input: JSON nested deeper than ", kMaxNesting, " levels"));
  switch (j.type()) {
    case nlohmann::json::value_t::null:
      return Value::none();
    case nlohmann::json::value_t::boolean:
      return Value::boolean(j.template get<bool>());
    case nlohmann::json::value_t::number_integer:
      return Value::integer(j.template get<int64_t>());
    case nlohmann::json::value_t::number_unsigned:
      return Value::integer(static_cast<int64_t>(j.template get<uint64_t>()));
    case nlohmann::json::value_t::number_float:
      return Value::real(j.template get<double>());
    case nlohmann::json::value_t::string:
      return Value::string(j.template get<std::string>());
    case nlohmann::json::value_t::array: {
      List items;
      for (const auto& x : j) items.push_back(from_json_any(x, depth + 1));
      return Value::make_list(std::move(items));
    }
    case nlohmann::json::value_t::object: {
      Dict items;
      for (auto it = j.begin(); it != j.end(); ++it)
        items.emplace_back(it.key(), from_json_any(it.value(), depth + 1));
      return Value::make_dict(std::move(items));
    }
    default:
      throw FormatError("chat template input: JSON value of unsupported type (binary)");
  }
}

Value from_json(const nlohmann::ordered_json& j) {
  return from_json_any(j);
}
Value from_json(const nlohmann::json& j) {
  return from_json_any(j);
}

static void json_dump(std::string& out, const Value& v, int indent, int level, const std::string& item_sep,
                      const std::string& key_sep, bool ascii) {
  auto newline = [&](int lv) {
    out += '\n';
    check_size(double(out.size()) + double(indent) * lv, "tojson");
    out.append(static_cast<size_t>(indent) * lv, ' ');
  };
  switch (v.kind) {
    case Kind::None:
      out += "null";
      return;
    case Kind::Bool:
      out += v.b ? "true" : "false";
      return;
    case Kind::Int:
      out += std::to_string(v.i);
      return;
    case Kind::Float:
      if (std::isnan(v.f))
        out += "NaN";
      else if (std::isinf(v.f))
        out += v.f > 0 ? "Infinity" : "-Infinity";
      else
        out += float_repr(v.f);
      return;
    case Kind::String:
      io::put_python_json_string(out, v.s, ascii);
      return;
    case Kind::Array: {
      if (v.iter != Iter::None) break;
      if (v.list->empty()) {
        out += "[]";
        return;
      }
      out += '[';
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) out += item_sep;
        if (indent >= 0) newline(level + 1);
        json_dump(out, (*v.list)[k], indent, level + 1, item_sep, key_sep, ascii);
        check_size(double(out.size()), "tojson");
      }
      if (indent >= 0) newline(level);
      out += ']';
      return;
    }
    case Kind::Map: {
      if (v.is_namespace) break;
      if (v.dict->empty()) {
        out += "{}";
        return;
      }
      out += '{';
      bool first = true;
      for (const auto& [k, x] : *v.dict) {
        if (!first) out += item_sep;
        first = false;
        if (indent >= 0) newline(level + 1);
        io::put_python_json_string(out, to_str(key_value(k)),
                                   ascii);  // json.dumps writes int keys as strings
        out += key_sep;
        json_dump(out, x, indent, level + 1, item_sep, key_sep, ascii);
        check_size(double(out.size()), "tojson");
      }
      if (indent >= 0) newline(level);
      out += '}';
      return;
    }
    default:
      break;
  }
  throw TemplateError(detail::str("tojson: Object of type ", type_name(v), " is not JSON serializable"));
}

std::string to_json(const Value& v, int indent, const std::string& item_sep, const std::string& key_sep,
                    bool ensure_ascii) {
  std::string out;
  json_dump(out, v, indent, 0, item_sep, key_sep, ensure_ascii);
  return out;
}

Value html_escape(const Value& v) {
  if (v.is_string() && v.is_markup) return v;
  std::string out;
  for (char c : to_str(v)) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&#34;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  Value r = Value::string(std::move(out));
  r.is_markup = true;
  return r;
}

static size_t utf8_step(unsigned char c) {
  if (c < 0x80) return 1;
  if ((c >> 5) == 0x6) return 2;
  if ((c >> 4) == 0xe) return 3;
  if ((c >> 3) == 0x1e) return 4;
  return 1;  // stray continuation byte: count it alone
}

std::vector<std::string> utf8_chars(const std::string& s) {
  std::vector<std::string> out;
  for (size_t p = 0; p < s.size();) {
    size_t n = std::min(utf8_step(static_cast<unsigned char>(s[p])), s.size() - p);
    out.push_back(s.substr(p, n));
    p += n;
  }
  return out;
}

size_t utf8_length(const std::string& s) {
  size_t n = 0;
  for (size_t p = 0; p < s.size(); ++n) p += utf8_step(static_cast<unsigned char>(s[p]));
  return n;
}

}  // namespace nibble::jinja
