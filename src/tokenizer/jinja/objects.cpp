// Python objects as the sandbox exposes them: attribute and item access (jinja2's getattr /
// getitem with their fallbacks to each other), the str/dict/list methods templates call,
// iteration, `in`, printf-style `%` formatting, and the global functions.
// ImmutableSandboxedEnvironment refuses methods that mutate a list or dict (append, pop,
// update, ...): calling one raises, as in transformers.
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <set>

#include "tokenizer/jinja/interpreter.h"
#include "tokenizer/jinja/strings.h"

namespace nibble::jinja {

namespace {

const Value* arg(CallArgs& a, size_t pos, const char* name) {
  return call_arg(a, pos, name);
}

Value bound(Value self, Value (*fn)(const Value&, CallArgs&)) {
  return Value::function([self, fn](CallArgs& a) { return fn(self, a); });
}

Value unsafe_method(const std::string& type, const std::string& name) {
  return Value::function([type, name](CallArgs&) -> Value {
    throw TemplateError(detail::str("access to attribute '", name, "' of '", type, "' object is unsafe."));
  });
}

std::string str_arg(CallArgs& a, size_t pos, const char* name, const char* method) {
  const Value* v = arg(a, pos, name);
  if (!v || !v->is_string()) throw TemplateError(detail::str(method, "() argument '", name, "' must be str"));
  return v->s;
}

// str.strip/lstrip/rstrip(chars=None).
Value str_strip(const Value& self, CallArgs& a, bool left, bool right) {
  const Value* c = arg(a, 0, "chars");
  if (c && !c->is_none() && !c->is_string()) throw TemplateError("strip arg must be None or str");
  return Value::string(py_strip(self.s, c && c->is_string() ? &c->s : nullptr, left, right));
}

Value str_split(const Value& self, CallArgs& a, bool from_right) {
  const Value* sep = arg(a, 0, "sep");
  const Value* maxv = arg(a, 1, "maxsplit");
  int64_t maxsplit = maxv ? maxv->i : -1;
  if (sep && sep->is_string() && sep->s.empty()) throw TemplateError("empty separator");
  if (sep && !sep->is_string() && !sep->is_none()) throw TemplateError("must be str or None");
  std::vector<std::string> parts =
      py_split(self.s, sep && sep->is_string() ? &sep->s : nullptr, maxsplit, from_right);
  List out;
  for (auto& p : parts) out.push_back(Value::string(p));
  return Value::make_list(std::move(out));
}

bool affix_match(const Value& self, CallArgs& a, bool prefix) {
  const Value* x = arg(a, 0, "prefix");
  if (!x)
    throw TemplateError(prefix ? "startswith() takes at least 1 argument"
                               : "endswith() takes at least 1 argument");
  auto one = [&](const std::string& p) {
    if (p.size() > self.s.size()) return false;
    return prefix ? self.s.compare(0, p.size(), p) == 0
                  : self.s.compare(self.s.size() - p.size(), p.size(), p) == 0;
  };
  if (x->is_string()) return one(x->s);
  if (x->is_list()) {
    for (const Value& p : *x->list)
      if (p.is_string() && one(p.s)) return true;
    return false;
  }
  throw TemplateError("startswith/endswith first arg must be str or a tuple of str");
}

// str.format with {} / {0} / {name} fields; format specs and conversions are refused.
std::string str_format(const std::string& fmt, CallArgs& a) {
  std::string out;
  size_t auto_idx = 0;
  for (size_t k = 0; k < fmt.size(); ++k) {
    char c = fmt[k];
    if (c == '{' && k + 1 < fmt.size() && fmt[k + 1] == '{') {
      out += '{';
      ++k;
    } else if (c == '}' && k + 1 < fmt.size() && fmt[k + 1] == '}') {
      out += '}';
      ++k;
    } else if (c == '{') {
      size_t e = fmt.find('}', k);
      if (e == std::string::npos) throw TemplateError("Single '{' encountered in format string");
      std::string field = fmt.substr(k + 1, e - k - 1);
      if (field.find_first_of(":!.[") != std::string::npos)
        throw UnsupportedError(
            detail::str("str.format field '{", field, "}' (format specs) is not supported"));
      const Value* v = nullptr;
      if (field.empty()) {
        if (auto_idx >= a.args.size())
          throw TemplateError("Replacement index out of range for positional args tuple");
        v = &a.args[auto_idx++];
      } else if (std::isdigit(static_cast<unsigned char>(field[0]))) {
        size_t idx = 0;
        for (char d : field) {
          if (!std::isdigit(static_cast<unsigned char>(d)) || idx > a.args.size())
            throw TemplateError(detail::str("KeyError: '", field, "'"));
          idx = idx * 10 + size_t(d - '0');
        }
        if (idx >= a.args.size())
          throw TemplateError("Replacement index out of range for positional args tuple");
        v = &a.args[idx];
      } else {
        for (auto& [key, x] : a.kwargs)
          if (key == field) v = &x;
        if (!v) throw TemplateError(detail::str("KeyError: '", field, "'"));
      }
      out += to_str(*v);
      k = e;
    } else if (c == '}') {
      throw TemplateError("Single '}' encountered in format string");
    } else {
      out += c;
    }
  }
  return out;
}

Value string_method(const Value& self, const std::string& name) {
  using F = Value (*)(const Value&, CallArgs&);
  static const std::map<std::string, F> methods = {
      {"strip", [](const Value& s, CallArgs& a) { return str_strip(s, a, true, true); }},
      {"lstrip", [](const Value& s, CallArgs& a) { return str_strip(s, a, true, false); }},
      {"rstrip", [](const Value& s, CallArgs& a) { return str_strip(s, a, false, true); }},
      {"split", [](const Value& s, CallArgs& a) { return str_split(s, a, false); }},
      {"rsplit", [](const Value& s, CallArgs& a) { return str_split(s, a, true); }},
      {"splitlines",
       [](const Value& s, CallArgs&) {
         List out;
         for (auto& l : py_splitlines(s.s)) out.push_back(Value::string(l));
         return Value::make_list(std::move(out));
       }},
      {"startswith", [](const Value& s, CallArgs& a) { return Value::boolean(affix_match(s, a, true)); }},
      {"endswith", [](const Value& s, CallArgs& a) { return Value::boolean(affix_match(s, a, false)); }},
      {"upper", [](const Value& s, CallArgs&) { return Value::string(py_upper(s.s)); }},
      {"lower", [](const Value& s, CallArgs&) { return Value::string(py_lower(s.s)); }},
      {"title", [](const Value& s, CallArgs&) { return Value::string(py_title(s.s)); }},
      {"capitalize", [](const Value& s, CallArgs&) { return Value::string(py_capitalize(s.s)); }},
      {"replace",
       [](const Value& s, CallArgs& a) {
         const Value* n = arg(a, 2, "count");
         return Value::string(py_replace(s.s, str_arg(a, 0, "old", "replace"),
                                         str_arg(a, 1, "new", "replace"), n ? n->i : -1));
       }},
      {"find",
       [](const Value& s, CallArgs& a) {
         size_t p = s.s.find(str_arg(a, 0, "sub", "find"));
         return Value::integer(p == std::string::npos ? -1
                                                      : static_cast<int64_t>(utf8_length(s.s.substr(0, p))));
       }},
      {"rfind",
       [](const Value& s, CallArgs& a) {
         size_t p = s.s.rfind(str_arg(a, 0, "sub", "rfind"));
         return Value::integer(p == std::string::npos ? -1
                                                      : static_cast<int64_t>(utf8_length(s.s.substr(0, p))));
       }},
      {"count",
       [](const Value& s, CallArgs& a) {
         std::string sub = str_arg(a, 0, "sub", "count");
         if (sub.empty()) return Value::integer(static_cast<int64_t>(utf8_length(s.s)) + 1);
         int64_t n = 0;
         for (size_t p = s.s.find(sub); p != std::string::npos; p = s.s.find(sub, p + sub.size())) ++n;
         return Value::integer(n);
       }},
      {"join",
       [](const Value& s, CallArgs& a) {
         const Value* it = arg(a, 0, "iterable");
         if (!it) throw TemplateError("join() takes exactly one argument");
         std::string out;
         bool first = true;
         for (const Value& x : iterate(*it)) {
           if (!x.is_string()) throw TemplateError("sequence item: expected str instance");
           if (!first) out += s.s;
           first = false;
           out += x.s;
           check_size(double(out.size()), "join");
         }
         return Value::string(out);
       }},
      {"format", [](const Value& s, CallArgs& a) { return Value::string(str_format(s.s, a)); }},
      {"removeprefix",
       [](const Value& s, CallArgs& a) {
         std::string p = str_arg(a, 0, "prefix", "removeprefix");
         return Value::string(s.s.compare(0, p.size(), p) == 0 ? s.s.substr(p.size()) : s.s);
       }},
      {"removesuffix",
       [](const Value& s, CallArgs& a) {
         std::string p = str_arg(a, 0, "suffix", "removesuffix");
         bool has =
             !p.empty() && p.size() <= s.s.size() && s.s.compare(s.s.size() - p.size(), p.size(), p) == 0;
         return Value::string(has ? s.s.substr(0, s.s.size() - p.size()) : s.s);
       }},
      {"isdigit",
       [](const Value& s, CallArgs&) {
         return Value::boolean(!s.s.empty() && std::all_of(s.s.begin(), s.s.end(),
                                                           [](char c) { return c >= '0' && c <= '9'; }));
       }},
      {"isalpha",
       [](const Value& s, CallArgs&) {
         return Value::boolean(!s.s.empty() && std::all_of(s.s.begin(), s.s.end(), [](char c) {
           return std::isalpha(static_cast<unsigned char>(c)) != 0;
         }));
       }},
      {"isspace",
       [](const Value& s, CallArgs&) {
         return Value::boolean(!s.s.empty() && py_strip(s.s, nullptr, true, true).empty());
       }},
      {"islower", [](const Value& s, CallArgs&) { return Value::boolean(py_islower(s.s)); }},
      {"isupper", [](const Value& s, CallArgs&) { return Value::boolean(py_isupper(s.s)); }},
  };
  auto it = methods.find(name);
  if (it == methods.end()) return Value::undefined(detail::str("'str object' has no attribute '", name, "'"));
  // Arguments the implementations above read; more (start/end offsets, keepends, ...) would be
  // ignored silently, so they are refused.
  static const std::map<std::string, size_t> max_args = {
      {"strip", 1},      {"lstrip", 1},     {"rstrip", 1},       {"split", 2},        {"rsplit", 2},
      {"splitlines", 0}, {"startswith", 1}, {"endswith", 1},     {"upper", 0},        {"lower", 0},
      {"title", 0},      {"capitalize", 0}, {"replace", 3},      {"find", 1},         {"rfind", 1},
      {"count", 1},      {"join", 1},       {"removeprefix", 1}, {"removesuffix", 1}, {"isdigit", 0},
      {"isalpha", 0},    {"isspace", 0},    {"islower", 0},      {"isupper", 0}};
  auto limit = max_args.find(name);
  Value (*fn)(const Value&, CallArgs&) = it->second;
  if (limit == max_args.end()) return bound(self, fn);
  size_t most = limit->second;
  return Value::function([self, fn, name, most](CallArgs& a) -> Value {
    if (a.args.size() + a.kwargs.size() > most)
      throw UnsupportedError(detail::str("str.", name, "() with ", a.args.size() + a.kwargs.size(),
                                         " arguments is not supported"));
    return fn(self, a);
  });
}

Value dict_items(const Value& d) {
  List out;
  for (const auto& [k, v] : *d.dict) out.push_back(Value::make_list({key_value(k), v}, true));
  return Value::make_iter(std::move(out), Iter::DictItems);
}

Value dict_method(const Value& self, const std::string& name) {
  if (name == "items") return bound(self, [](const Value& d, CallArgs&) { return dict_items(d); });
  if (name == "keys")
    return bound(self, [](const Value& d, CallArgs&) {
      List out;
      for (const auto& kv : *d.dict) out.push_back(key_value(kv.first));
      return Value::make_iter(std::move(out), Iter::DictKeys);
    });
  if (name == "values")
    return bound(self, [](const Value& d, CallArgs&) {
      List out;
      for (const auto& kv : *d.dict) out.push_back(kv.second);
      return Value::make_iter(std::move(out), Iter::DictValues);
    });
  if (name == "get")
    return bound(self, [](const Value& d, CallArgs& a) {
      const Value* k = arg(a, 0, "key");
      if (!k) throw TemplateError("get expected at least 1 argument, got 0");
      const Value* def = arg(a, 1, "default");
      const Value* v = (k->is_string() || k->kind == Kind::Int) ? d.find(key_of(*k)) : nullptr;
      return v ? *v : (def ? *def : Value::none());
    });
  if (name == "copy") return bound(self, [](const Value& d, CallArgs&) { return Value::make_dict(*d.dict); });
  static const std::set<std::string> mutators = {"pop", "popitem", "setdefault", "update", "clear"};
  if (mutators.count(name)) return unsafe_method("dict", name);
  return Value();
}

Value list_method(const Value& self, const std::string& name) {
  if (self.iter != Iter::None && self.iter != Iter::Range)
    return Value::undefined(detail::str("'", type_name(self), " object' has no attribute '", name, "'"));
  if (name == "index")
    return bound(self, [](const Value& l, CallArgs& a) {
      const Value* x = arg(a, 0, "value");
      for (size_t k = 0; x && k < l.list->size(); ++k)
        if (equals((*l.list)[k], *x)) return Value::integer(static_cast<int64_t>(k));
      throw TemplateError("list.index(x): x not in list");
    });
  if (name == "count")
    return bound(self, [](const Value& l, CallArgs& a) {
      const Value* x = arg(a, 0, "value");
      int64_t n = 0;
      for (const Value& v : *l.list) n += x && equals(v, *x);
      return Value::integer(n);
    });
  static const std::set<std::string> mutators = {"append", "extend",  "insert", "pop",
                                                 "remove", "reverse", "sort",   "clear"};
  if (mutators.count(name)) return unsafe_method(self.is_tuple ? "tuple" : "list", name);
  return Value::undefined(detail::str("'", type_name(self), " object' has no attribute '", name, "'"));
}

}  // namespace

Value get_attr(const Value& obj, const std::string& name) {
  switch (obj.kind) {
    case Kind::Undefined:
      throw TemplateError(obj.s.empty() ? "value is undefined" : obj.s);
    case Kind::String:
      return string_method(obj, name);
    case Kind::Array:
      return list_method(obj, name);
    case Kind::Map: {
      if (!obj.is_namespace) {
        Value m = dict_method(obj, name);
        if (!m.is_undefined()) return m;
      }
      if (const Value* v = obj.find(name)) return *v;
      return Value::undefined(detail::str("'", obj.is_namespace ? "Namespace" : "dict object",
                                          "' has no attribute '", name, "'"));
    }
    default:
      return Value::undefined(detail::str("'", type_name(obj), " object' has no attribute '", name, "'"));
  }
}

Value get_item(const Value& obj, const Value& key) {
  if (obj.is_undefined()) throw TemplateError(obj.s.empty() ? "value is undefined" : obj.s);
  if (obj.is_dict() && key.is_string()) {
    if (const Value* v = obj.find(key.s)) return *v;
    return get_attr(obj, key.s);
  }
  if (obj.is_dict() && key.kind == Kind::Int) {
    if (const Value* v = obj.find(key_of(key))) return *v;
    return Value::undefined(detail::str("'dict object' has no attribute ", key.i));
  }
  if (obj.is_list() && obj.iter != Iter::None && obj.iter != Iter::Range)  // not subscriptable
    return Value::undefined(detail::str("'", type_name(obj), " object' has no element ", repr(key)));
  if ((obj.is_list() || obj.is_string()) && (key.kind == Kind::Int || key.kind == Kind::Bool)) {
    int64_t k = key.kind == Kind::Bool ? key.b : key.i;
    if (obj.is_list()) {
      int64_t n = static_cast<int64_t>(obj.list->size());
      if (k < 0) k += n;
      if (k < 0 || k >= n)
        return Value::undefined(detail::str("'", type_name(obj), " object' has no element ", key.i));
      return (*obj.list)[k];
    }
    std::vector<std::string> chars = utf8_chars(obj.s);
    int64_t n = static_cast<int64_t>(chars.size());
    if (k < 0) k += n;
    if (k < 0 || k >= n) return Value::undefined(detail::str("'str object' has no element ", key.i));
    return Value::string(chars[k]);
  }
  if (key.is_string()) return get_attr(obj, key.s);
  return Value::undefined(detail::str("'", type_name(obj), " object' has no element ", repr(key)));
}

bool contains(const Value& container, const Value& x) {
  switch (container.kind) {
    case Kind::String:
      if (!x.is_string())
        throw TemplateError(detail::str("'in <string>' requires string as left operand, not ", type_name(x)));
      return container.s.find(x.s) != std::string::npos;
    case Kind::Array:
      for (const Value& v : iterate(container))
        if (equals(v, x)) return true;
      return false;
    case Kind::Map:
      if ((x.is_list() && !x.is_tuple) || x.is_dict())
        throw TemplateError(detail::str("unhashable type: '", type_name(x), "'"));
      return (x.is_string() || x.kind == Kind::Int) && container.find(key_of(x)) != nullptr;
    case Kind::Undefined:
      return false;
    default:
      throw TemplateError(detail::str("argument of type '", type_name(container), "' is not iterable"));
  }
}

List iterate(const Value& v) {
  switch (v.kind) {
    case Kind::Undefined:
      return {};
    case Kind::Array: {
      if (!v.single_pass()) return *v.list;
      // A generator yields each item once: later iterations see only what is left.
      size_t from = std::min(*v.cursor, v.list->size());
      *v.cursor = v.list->size();
      return List(v.list->begin() + static_cast<std::ptrdiff_t>(from), v.list->end());
    }
    case Kind::Map: {
      List out;
      if (v.is_namespace) throw TemplateError("'Namespace' object is not iterable");
      for (const auto& kv : *v.dict) out.push_back(key_value(kv.first));
      return out;
    }
    case Kind::String: {
      List out;
      for (auto& c : utf8_chars(v.s)) out.push_back(Value::string(c));
      return out;
    }
    default:
      throw TemplateError(detail::str("'", type_name(v), "' object is not iterable"));
  }
}

namespace {

// snprintf into a string of the size it needs (a width of a billion is refused, not truncated).
template <typename... A>
std::string c_format(const std::string& f, A... a) {
  double field = 0;  // each width / precision of the spec, checked before printf pads to it
  for (char c : f) {
    field = std::isdigit(static_cast<unsigned char>(c)) ? field * 10 + (c - '0') : 0;
    check_size(field, "format");
  }
  const int n = std::snprintf(nullptr, 0, f.c_str(), a...);
  if (n < 0) throw TemplateError(detail::str("format '", f, "': the field is too wide"));
  check_size(double(n), "format");
  std::string r(size_t(n) + 1, '\0');
  std::snprintf(r.data(), r.size(), f.c_str(), a...);
  r.resize(size_t(n));
  return r;
}

// %d / %x of a number: Python's int(x), an error for NaN, infinities and what int64 cannot hold.
long long format_int(const Value& v, const char* what) {
  if (v.kind == Kind::Int) return static_cast<long long>(v.i);
  const double x = as_double(v, what);
  if (!(x > -9.2e18 && x < 9.2e18))
    throw TemplateError(detail::str(what, " format: ", float_repr(x), " cannot be converted to an integer"));
  return static_cast<long long>(x);
}

}  // namespace

std::string percent_format(const std::string& fmt, const Value& args) {
  List positional;
  const Value* mapping = nullptr;
  if (args.is_list() && args.is_tuple)
    positional = *args.list;
  else if (args.is_dict())
    mapping = &args;
  else
    positional.push_back(args);
  size_t next = 0;
  std::string out;
  for (size_t k = 0; k < fmt.size(); ++k) {
    if (fmt[k] != '%') {
      out += fmt[k];
      continue;
    }
    if (++k >= fmt.size()) throw TemplateError("incomplete format");
    const Value* v = nullptr;
    if (fmt[k] == '(') {
      size_t e = fmt.find(')', k);
      if (e == std::string::npos || !mapping) throw TemplateError("format requires a mapping");
      v = mapping->find(fmt.substr(k + 1, e - k - 1));
      if (!v) throw TemplateError(detail::str("KeyError: '", fmt.substr(k + 1, e - k - 1), "'"));
      k = e + 1;
    }
    std::string spec = "%";
    while (k < fmt.size() && std::string("-+ #0123456789.").find(fmt[k]) != std::string::npos)
      spec += fmt[k++];
    if (k >= fmt.size()) throw TemplateError("incomplete format");
    char type = fmt[k];
    if (type == '%') {
      out += '%';
      continue;
    }
    if (!v) {
      if (next >= positional.size()) throw TemplateError("not enough arguments for format string");
      v = &positional[next++];
    }
    switch (type) {
      case 's':
      case 'r': {
        std::string s = type == 's' ? to_str(*v) : repr(*v);
        out += spec == "%" ? s : c_format(spec + "s", s.c_str());
        break;
      }
      case 'd':
      case 'i':
        out += c_format(spec + "lld", format_int(*v, "%d"));
        break;
      case 'f':
      case 'F':
      case 'e':
      case 'g':
        out += c_format(spec + type, as_double(*v, "%f"));
        break;
      case 'x':
      case 'X':
      case 'o':
        out += c_format(spec + "ll" + type, format_int(*v, "%x"));
        break;
      default:
        throw UnsupportedError(detail::str("printf-style format '%", type, "' is not supported"));
    }
  }
  // Python treats any non-tuple with __getitem__ (list, dict) as a mapping: unused is fine.
  bool mapping_like = mapping || (args.is_list() && !args.is_tuple) || args.is_undefined();
  if (!mapping_like && next < positional.size())
    throw TemplateError("not all arguments converted during string formatting");
  return out;
}

void add_globals(Scope& scope) {
  scope.vars["range"] = Value::function([](CallArgs& a) -> Value {
    int64_t start = 0, stop = 0, step = 1;
    auto num = [](const Value& v) {
      if (v.kind != Kind::Int && v.kind != Kind::Bool)
        throw TemplateError("range() arguments must be integers");
      return v.kind == Kind::Bool ? static_cast<int64_t>(v.b) : v.i;
    };
    if (a.args.size() == 1)
      stop = num(a.args[0]);
    else if (a.args.size() >= 2) {
      start = num(a.args[0]);
      stop = num(a.args[1]);
      if (a.args.size() == 3) step = num(a.args[2]);
    } else {
      throw TemplateError("range expected at least 1 argument");
    }
    if (step == 0) throw TemplateError("range() arg 3 must not be zero");
    List out;
    for (int64_t k = start; step > 0 ? k < stop : k > stop; k += step) {
      out.push_back(Value::integer(k));
      if (out.size() > 100000) throw TemplateError("range too big");
      charge_step();
    }
    Value r = Value::make_iter(std::move(out), Iter::Range);
    r.s = step == 1 ? detail::str("range(", start, ", ", stop, ")")
                    : detail::str("range(", start, ", ", stop, ", ", step, ")");
    return r;
  });
  scope.vars["namespace"] = Value::function([](CallArgs& a) -> Value {
    Value ns = Value::make_dict();
    ns.is_namespace = true;
    for (const Value& p : a.args)
      if (p.is_dict())
        for (const auto& [k, v] : *p.dict) ns.set(k, v);
    for (auto& [k, v] : a.kwargs) ns.set(k, v);
    return ns;
  });
  scope.vars["dict"] = Value::function([](CallArgs& a) -> Value {
    Value d = Value::make_dict();
    for (const Value& p : a.args)
      if (p.is_dict())
        for (const auto& [k, v] : *p.dict) d.set(k, v);
    for (auto& [k, v] : a.kwargs) d.set(k, v);
    return d;
  });
  scope.vars["joiner"] = Value::function([](CallArgs& a) -> Value {
    std::string sep = a.args.empty() ? ", " : to_str(a.args[0]);
    auto used = std::make_shared<bool>(false);
    return Value::function([sep, used](CallArgs&) -> Value {
      if (!*used) {
        *used = true;
        return Value::string("");
      }
      return Value::string(sep);
    });
  });
  for (const char* name : {"cycler", "lipsum"}) {
    std::string n = name;
    scope.vars[n] = Value::function([n](CallArgs&) -> Value {
      throw UnsupportedError(detail::str("the global '", n, "()' is not supported"));
    });
  }
  scope.vars["raise_exception"] = Value::function([](CallArgs& a) -> Value {
    throw RaisedError(a.args.empty() ? std::string("raise_exception called") : to_str(a.args[0]));
  });
  scope.vars["strftime_now"] = Value::function([](CallArgs& a) -> Value {
    if (a.args.empty() || !a.args[0].is_string())
      throw TemplateError("strftime_now() expects a format string");
    std::time_t now = std::time(nullptr);
    std::tm tm{};
    localtime_r(&now, &tm);
    char buf[256];
    size_t n = std::strftime(buf, sizeof buf, a.args[0].s.c_str(), &tm);
    return Value::string(std::string(buf, n));
  });
}

}  // namespace nibble::jinja
