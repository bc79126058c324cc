// jinja2's built-in filters and tests, each following jinja2/filters.py and tests.py (argument
// names, defaults, Undefined handling), with `tojson` replaced by transformers' override:
// json.dumps(x, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys).
#include <algorithm>
#include <cmath>

#include "tokenizer/jinja/interpreter.h"
#include "tokenizer/jinja/strings.h"

namespace nibble::jinja {

namespace {

const Value* arg(CallArgs& a, size_t pos, const char* name) {
  return call_arg(a, pos, name);
}

bool arg_bool(CallArgs& a, size_t pos, const char* name, bool def) {
  const Value* v = arg(a, pos, name);
  return v ? truthy(*v) : def;
}

int64_t arg_int(CallArgs& a, size_t pos, const char* name, int64_t def) {
  const Value* v = arg(a, pos, name);
  if (!v) return def;
  const double x = as_double(*v, name);
  if (!(x > -9.2e18 && x < 9.2e18))  // NaN, inf, past int64: Python's OverflowError / ValueError
    throw TemplateError(detail::str("'", name, "' = ", float_repr(x), " is not a usable integer"));
  return static_cast<int64_t>(x);
}

std::string need_str(const Value& v) {
  return to_str(v);
}

// attribute="a.b" or an integer index, as jinja2's make_attrgetter.
Value attr_path(const Value& item, const Value& attribute) {
  if (attribute.kind == Kind::Int) return get_item(item, attribute);
  Value cur = item;
  std::string path = to_str(attribute);
  size_t p = 0;
  while (true) {
    size_t q = path.find('.', p);
    std::string part = path.substr(p, q == std::string::npos ? std::string::npos : q - p);
    bool digits =
        !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
    if (digits && part.size() > 18)  // past int64 (stoll would throw): no list is that long
      throw TemplateError(detail::str("attribute index out of range: ", part));
    cur = digits ? get_item(cur, Value::integer(std::stoll(part))) : get_item(cur, Value::string(part));
    if (q == std::string::npos) return cur;
    p = q + 1;
  }
}

// The sort key jinja2 uses: strings lower-cased unless case_sensitive.
Value sort_key(const Value& v, bool case_sensitive) {
  if (!case_sensitive && v.is_string()) return Value::string(py_lower(v.s));
  return v;
}

Value f_default(Interpreter&, Value& v, CallArgs& a) {
  const Value* def = arg(a, 0, "default_value");
  bool boolean = arg_bool(a, 1, "boolean", false);
  if (v.is_undefined() || (boolean && !truthy(v))) return def ? *def : Value::string("");
  return v;
}

Value f_length(Interpreter&, Value& v, CallArgs&) {
  switch (v.kind) {
    case Kind::String:
      return Value::integer(static_cast<int64_t>(utf8_length(v.s)));
    case Kind::Array:
      if (v.single_pass())
        throw TemplateError(detail::str("object of type '", type_name(v), "' has no len()"));
      return Value::integer(static_cast<int64_t>(v.list->size()));
    case Kind::Map:
      return Value::integer(static_cast<int64_t>(v.dict->size()));
    case Kind::Undefined:
      return Value::integer(0);
    default:
      throw TemplateError(detail::str("object of type '", type_name(v), "' has no len()"));
  }
}

// transformers' tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
// positional filter arguments bind in that order.
Value f_tojson(Interpreter&, Value& v, CallArgs& a) {
  const bool ascii = arg_bool(a, 0, "ensure_ascii", false);
  const Value* ind = arg(a, 1, "indent");
  int indent = -1;
  if (ind && !ind->is_none()) {
    if (ind->kind == Kind::Int)
      indent = static_cast<int>(std::clamp<int64_t>(ind->i, 0, int64_t(kMaxStringBytes)));
    else
      throw UnsupportedError("tojson indent other than an integer is not supported");
  }
  std::string item_sep = indent >= 0 ? "," : ", ", key_sep = ": ";
  if (const Value* sep = arg(a, 2, "separators"); sep && !sep->is_none()) {
    if (!sep->is_list() || sep->list->size() != 2) throw TemplateError("tojson separators must be a pair");
    item_sep = to_str((*sep->list)[0]);
    key_sep = to_str((*sep->list)[1]);
  }
  if (arg_bool(a, 3, "sort_keys", false)) {
    std::function<Value(const Value&)> sorted = [&](const Value& x) -> Value {
      if (x.is_list()) {
        List items;
        for (const Value& y : *x.list) items.push_back(sorted(y));
        return Value::make_list(std::move(items), x.is_tuple);
      }
      if (x.is_dict() && !x.is_namespace) {
        Dict d = *x.dict;
        std::stable_sort(d.begin(), d.end(), [](const auto& p, const auto& q) { return p.first < q.first; });
        for (auto& kv : d) kv.second = sorted(kv.second);
        return Value::make_dict(std::move(d));
      }
      return x;
    };
    return Value::string(to_json(sorted(v), indent, item_sep, key_sep, ascii));
  }
  return Value::string(to_json(v, indent, item_sep, key_sep, ascii));
}

Value f_join(Interpreter&, Value& v, CallArgs& a) {
  const Value* d = arg(a, 0, "d");
  const Value* attribute = arg(a, 1, "attribute");
  std::string sep = d ? to_str(*d) : "";
  std::string out;
  bool first = true;
  for (const Value& x : iterate(v)) {
    if (!first) out += sep;
    first = false;
    out += to_str(attribute ? attr_path(x, *attribute) : x);
    check_size(double(out.size()), "join");
  }
  return Value::string(out);
}

Value f_trim(Interpreter&, Value& v, CallArgs& a) {
  const Value* chars = arg(a, 0, "chars");
  std::string s = need_str(v);
  return Value::string(py_strip(s, chars && chars->is_string() ? &chars->s : nullptr, true, true));
}

Value f_replace(Interpreter&, Value& v, CallArgs& a) {
  const Value* old = arg(a, 0, "old");
  const Value* repl = arg(a, 1, "new");
  if (!old || !repl) throw TemplateError("replace() needs old and new");
  return Value::string(py_replace(need_str(v), to_str(*old), to_str(*repl), arg_int(a, 2, "count", -1)));
}

// jinja2's title: capitalise each word, words split at whitespace, '-', brackets.
Value f_title(Interpreter&, Value& v, CallArgs&) {
  std::u32string u = utf8_decode(need_str(v));
  auto is_sep = [](char32_t c) {
    return py_isspace(c) || c == '-' || c == '(' || c == '{' || c == '[' || c == '<';
  };
  std::string out;
  size_t k = 0;
  while (k < u.size()) {
    size_t e = k;
    bool sep = is_sep(u[k]);
    while (e < u.size() && is_sep(u[e]) == sep) ++e;
    std::string part = utf8_encode(u.substr(k, e - k));
    out += sep ? part : py_capitalize(part);
    k = e;
  }
  return Value::string(out);
}

Value f_first(Interpreter&, Value& v, CallArgs&) {
  if (v.single_pass()) {  // next(iter(gen)) takes one item
    if (*v.cursor >= v.list->size()) return Value::undefined("No first item, sequence was empty.");
    return (*v.list)[(*v.cursor)++];
  }
  List items = iterate(v);
  return items.empty() ? Value::undefined("No first item, sequence was empty.") : items.front();
}

Value f_last(Interpreter&, Value& v, CallArgs&) {
  if (v.single_pass()) throw TemplateError(detail::str("'", type_name(v), "' object is not reversible"));
  List items = iterate(v);
  return items.empty() ? Value::undefined("No last item, sequence was empty.") : items.back();
}

Value f_int(Interpreter&, Value& v, CallArgs& a) {
  const Value* def = arg(a, 0, "default");
  Value fallback = def ? *def : Value::integer(0);
  int64_t base = arg_int(a, 1, "base", 10);
  if (v.is_undefined()) throw TemplateError(v.s.empty() ? "value is undefined" : v.s);  // Undefined.__int__
  auto from_double = [&](double x) -> Value {
    if (!std::isfinite(x)) return fallback;
    if (std::fabs(x) >= 9.2e18) throw UnsupportedError("int() of a value beyond 64 bits");
    return Value::integer(static_cast<int64_t>(x));
  };
  switch (v.kind) {
    case Kind::Int:
      return v;
    case Kind::Bool:
      return Value::integer(v.b);
    case Kind::Float:
      return from_double(v.f);
    case Kind::String: {
      std::string s = py_strip(v.s, nullptr, true, true);
      try {
        size_t used = 0;
        int64_t x = std::stoll(s, &used, static_cast<int>(base));
        if (used == s.size()) return Value::integer(x);
      } catch (const std::exception&) {
      }
      try {
        size_t used = 0;
        double x = std::stod(s, &used);
        if (used == s.size() && std::isfinite(x)) return from_double(x);
      } catch (const std::exception&) {
      }
      return fallback;
    }
    default:
      return fallback;
  }
}

Value f_float(Interpreter&, Value& v, CallArgs& a) {
  const Value* def = arg(a, 0, "default");
  Value fallback = def ? *def : Value::real(0.0);
  if (v.is_undefined()) throw TemplateError(v.s.empty() ? "value is undefined" : v.s);  // Undefined.__float__
  switch (v.kind) {
    case Kind::Int:
      return Value::real(static_cast<double>(v.i));
    case Kind::Bool:
      return Value::real(v.b);
    case Kind::Float:
      return v;
    case Kind::String: {
      std::string s = py_strip(v.s, nullptr, true, true);
      try {
        size_t used = 0;
        double x = std::stod(s, &used);
        if (used == s.size()) return Value::real(x);
      } catch (const std::exception&) {
      }
      return fallback;
    }
    default:
      return fallback;
  }
}

Value f_round(Interpreter&, Value& v, CallArgs& a) {
  int64_t precision = arg_int(a, 0, "precision", 0);
  const Value* m = arg(a, 1, "method");
  std::string method = m ? to_str(*m) : "common";
  double x = as_double(v, "round");
  double scale = std::pow(10.0, static_cast<double>(precision));
  if (method == "common") {
    if (v.kind == Kind::Int || v.kind == Kind::Bool) return Value::integer(static_cast<int64_t>(x));
    return Value::real(std::nearbyint(x * scale) / scale);  // Python's round: half to even
  }
  if (method == "ceil") return Value::real(std::ceil(x * scale) / scale);
  if (method == "floor") return Value::real(std::floor(x * scale) / scale);
  throw TemplateError("method must be common, ceil or floor");
}

Value f_abs(Interpreter&, Value& v, CallArgs&) {
  if (v.kind == Kind::Int || v.kind == Kind::Bool)
    return Value::integer(std::llabs(v.kind == Kind::Bool ? v.b : v.i));
  return Value::real(std::fabs(as_double(v, "abs")));
}

Value f_indent(Interpreter&, Value& v, CallArgs& a) {
  const Value* w = arg(a, 0, "width");
  std::string indention = "    ";
  if (w && w->is_string()) {
    indention = w->s;
  } else if (w) {
    const double width = as_double(*w, "width");
    check_size(width, "indent");
    indention = std::string(width > 0 ? static_cast<size_t>(width) : 0, ' ');
  }
  bool first = arg_bool(a, 1, "first", false), blank = arg_bool(a, 2, "blank", false);
  if (!v.is_string())
    throw TemplateError(detail::str("can only concatenate str (not \"", type_name(v), "\") to str"));
  std::string s = need_str(v) + "\n";  // jinja2 appends a newline so splitlines keeps a trailing empty line
  std::vector<std::string> lines = py_splitlines(s);
  std::string rv;
  if (blank) {
    for (size_t k = 0; k < lines.size(); ++k) rv += (k ? "\n" + indention : "") + lines[k];
  } else {
    rv = lines.empty() ? "" : lines[0];
    for (size_t k = 1; k < lines.size(); ++k) rv += "\n" + (lines[k].empty() ? "" : indention + lines[k]);
  }
  if (first) rv = indention + rv;
  return Value::string(rv);
}

Value f_list(Interpreter&, Value& v, CallArgs&) {
  return Value::make_list(iterate(v));
}

Value f_items(Interpreter&, Value& v, CallArgs&) {
  if (v.is_undefined()) return Value::make_iter({}, Iter::Generator);
  if (!v.is_dict()) throw TemplateError("Can only get item pairs from a mapping.");
  List out;
  for (const auto& [k, x] : *v.dict) out.push_back(Value::make_list({key_value(k), x}, true));
  return Value::make_iter(std::move(out), Iter::Generator);
}

Value f_escape(Interpreter&, Value& v, CallArgs&) {
  return html_escape(v);
}

Value f_unique(Interpreter&, Value& v, CallArgs& a) {
  bool cs = arg_bool(a, 0, "case_sensitive", false);
  const Value* attribute = arg(a, 1, "attribute");
  List out, seen;
  for (const Value& x : iterate(v)) {
    Value key = sort_key(attribute ? attr_path(x, *attribute) : x, cs);
    if ((key.is_list() && !key.is_tuple) || key.is_dict())
      throw TemplateError(detail::str("unhashable type: '", type_name(key), "'"));
    if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return equals(s, key); })) {
      seen.push_back(key);
      out.push_back(x);
    }
  }
  return Value::make_iter(std::move(out), Iter::Generator);
}

Value f_sort(Interpreter&, Value& v, CallArgs& a) {
  bool reverse = arg_bool(a, 0, "reverse", false), cs = arg_bool(a, 1, "case_sensitive", false);
  const Value* attribute = arg(a, 2, "attribute");
  List items = iterate(v);
  std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
    Value kx = sort_key(attribute ? attr_path(x, *attribute) : x, cs);
    Value ky = sort_key(attribute ? attr_path(y, *attribute) : y, cs);
    return reverse ? less(ky, kx) : less(kx, ky);
  });
  return Value::make_list(std::move(items));
}

Value f_dictsort(Interpreter&, Value& v, CallArgs& a) {
  bool cs = arg_bool(a, 0, "case_sensitive", false);
  const Value* by = arg(a, 1, "by");
  bool by_value = by && to_str(*by) == "value";
  bool reverse = arg_bool(a, 2, "reverse", false);
  if (!v.is_dict()) throw TemplateError("You can only sort by either \"key\" or \"value\"");
  List items;
  for (const auto& [k, x] : *v.dict) items.push_back(Value::make_list({key_value(k), x}, true));
  std::stable_sort(items.begin(), items.end(), [&](const Value& x, const Value& y) {
    Value kx = sort_key((*x.list)[by_value], cs), ky = sort_key((*y.list)[by_value], cs);
    return reverse ? less(ky, kx) : less(kx, ky);
  });
  return Value::make_list(std::move(items));
}

Value f_reverse(Interpreter&, Value& v, CallArgs&) {
  if (v.is_string()) {
    std::u32string u = utf8_decode(v.s);
    std::reverse(u.begin(), u.end());
    return Value::string(utf8_encode(u));
  }
  // reversed(seq) for sequences (an iterator); a generator is listed, then reversed.
  bool was_single_pass = v.single_pass();
  List items = iterate(v);
  std::reverse(items.begin(), items.end());
  if (was_single_pass || v.is_dict()) return Value::make_list(std::move(items));
  return Value::make_iter(std::move(items), Iter::Reverse);
}

Value f_batch(Interpreter&, Value& v, CallArgs& a) {
  int64_t n = arg_int(a, 0, "linecount", 1);
  if (n <= 0) throw TemplateError("batch size must be positive");
  const Value* fill = arg(a, 1, "fill_with");
  List out, cur;
  for (const Value& x : iterate(v)) {
    cur.push_back(x);
    if (static_cast<int64_t>(cur.size()) == n) {
      out.push_back(Value::make_list(std::move(cur)));
      cur.clear();
    }
  }
  if (!cur.empty()) {
    if (fill && !fill->is_none())
      while (static_cast<int64_t>(cur.size()) < n) cur.push_back(*fill);
    out.push_back(Value::make_list(std::move(cur)));
  }
  return Value::make_iter(std::move(out), Iter::Generator);
}

Value f_wordcount(Interpreter&, Value& v, CallArgs&) {
  // len(re.findall(r"\w+", s)): runs of letters, digits and underscores.
  std::u32string u = utf8_decode(to_str(v));
  int64_t n = 0;
  bool in = false;
  for (char32_t c : u) {
    bool w = c == '_' || (c < 128 ? std::isalnum(static_cast<int>(c)) != 0 : !py_isspace(c));
    if (w && !in) ++n;
    in = w;
  }
  return Value::integer(n);
}

Value f_center(Interpreter&, Value& v, CallArgs& a) {
  int64_t width = arg_int(a, 0, "width", 80);
  std::string s = to_str(v);
  int64_t len = static_cast<int64_t>(utf8_length(s));
  if (width <= len) return Value::string(s);
  check_size(double(width), "center");
  int64_t total = width - len, left = total / 2 + (total & width & 1);
  return Value::string(std::string(left, ' ') + s + std::string(total - left, ' '));
}

Value f_sum(Interpreter&, Value& v, CallArgs& a) {
  const Value* attribute = arg(a, 0, "attribute");
  const Value* start = arg(a, 1, "start");
  Value total = start ? *start : Value::integer(0);
  for (const Value& x : iterate(v)) {
    Value y = attribute ? attr_path(x, *attribute) : x;
    if ((total.kind == Kind::Int || total.kind == Kind::Bool) &&
        (y.kind == Kind::Int || y.kind == Kind::Bool))
      total =
          Value::integer((total.kind == Kind::Bool ? total.b : total.i) + (y.kind == Kind::Bool ? y.b : y.i));
    else
      total = Value::real(as_double(total, "sum") + as_double(y, "sum"));
  }
  return total;
}

Value min_max(Value& v, CallArgs& a, bool want_max) {
  bool cs = arg_bool(a, 0, "case_sensitive", false);
  const Value* attribute = arg(a, 1, "attribute");
  List items = iterate(v);
  if (items.empty()) return Value::undefined("No aggregated item, sequence was empty.");
  size_t best = 0;
  for (size_t k = 1; k < items.size(); ++k) {
    Value kb = sort_key(attribute ? attr_path(items[best], *attribute) : items[best], cs);
    Value kk = sort_key(attribute ? attr_path(items[k], *attribute) : items[k], cs);
    if (want_max ? less(kb, kk) : less(kk, kb)) best = k;
  }
  return items[best];
}

Value f_format(Interpreter&, Value& v, CallArgs& a) {
  if (!a.kwargs.empty() && !a.args.empty())
    throw TemplateError("can't handle positional and keyword arguments at the same time");
  if (!a.kwargs.empty()) {
    Dict d(a.kwargs.begin(), a.kwargs.end());
    return Value::string(percent_format(to_str(v), Value::make_dict(std::move(d))));
  }
  return Value::string(percent_format(to_str(v), Value::make_list(a.args, true)));
}

// select/reject/selectattr/rejectattr share one loop: `attr` picks the tested value,
// `keep_when` is the test result that keeps an item.
Value select_impl(Interpreter& in, Value& v, CallArgs& a, bool by_attr, bool keep_when) {
  size_t k = 0;
  Value attribute;
  if (by_attr) {
    if (a.args.empty()) throw TemplateError("selectattr/rejectattr need an attribute name");
    attribute = a.args[k++];
  }
  std::string test;
  CallArgs targs;
  if (k < a.args.size()) {
    test = to_str(a.args[k++]);
    targs.args.assign(a.args.begin() + static_cast<std::ptrdiff_t>(k), a.args.end());
    targs.kwargs = a.kwargs;
  }
  List out;
  if (!truthy(v)) return Value::make_iter({}, Iter::Generator);  // jinja2: `if seq:` before iterating
  for (const Value& x : iterate(v)) {
    Value probe = by_attr ? attr_path(x, attribute) : x;
    bool r;
    if (test.empty()) {
      r = truthy(probe);
    } else {
      CallArgs copy = targs;
      r = in.apply_test(test, probe, copy, 0);
    }
    if (r == keep_when) out.push_back(x);
  }
  return Value::make_iter(std::move(out), Iter::Generator);
}

Value f_map(Interpreter& in, Value& v, CallArgs& a) {
  const Value* attribute = nullptr;
  const Value* def = nullptr;
  for (auto& [k, x] : a.kwargs) {
    if (k == "attribute") attribute = &x;
    if (k == "default") def = &x;
  }
  List out;
  if (!truthy(v)) return Value::make_iter({}, Iter::Generator);  // jinja2: `if seq:` before iterating
  if (attribute) {
    for (const Value& x : iterate(v)) {
      Value y = attr_path(x, *attribute);
      out.push_back(y.is_undefined() && def ? *def : y);
    }
    return Value::make_iter(std::move(out), Iter::Generator);
  }
  if (a.args.empty()) throw TemplateError("map requires a filter argument");
  std::string name = to_str(a.args[0]);
  CallArgs fargs;
  fargs.args.assign(a.args.begin() + 1, a.args.end());
  fargs.kwargs = a.kwargs;
  for (const Value& x : iterate(v)) {
    CallArgs copy = fargs;
    out.push_back(in.apply_filter(name, x, copy, 0));
  }
  return Value::make_iter(std::move(out), Iter::Generator);
}

}  // namespace

const std::map<std::string, FilterFn>& filters() {
  static const std::map<std::string, FilterFn> table = {
      {"abs", f_abs},
      {"attr", [](Interpreter&, Value& v,
                  CallArgs& a) { return get_attr(v, a.args.empty() ? "" : to_str(a.args[0])); }},
      {"batch", f_batch},
      {"capitalize",
       [](Interpreter&, Value& v, CallArgs&) { return Value::string(py_capitalize(to_str(v))); }},
      {"center", f_center},
      {"count", f_length},
      {"d", f_default},
      {"default", f_default},
      {"dictsort", f_dictsort},
      {"e", f_escape},
      {"escape", f_escape},
      {"first", f_first},
      {"float", f_float},
      {"forceescape", f_escape},
      {"format", f_format},
      {"indent", f_indent},
      {"int", f_int},
      {"items", f_items},
      {"join", f_join},
      {"last", f_last},
      {"length", f_length},
      {"list", f_list},
      {"lower", [](Interpreter&, Value& v, CallArgs&) { return Value::string(py_lower(to_str(v))); }},
      {"map", f_map},
      {"max", [](Interpreter&, Value& v, CallArgs& a) { return min_max(v, a, true); }},
      {"min", [](Interpreter&, Value& v, CallArgs& a) { return min_max(v, a, false); }},
      {"reject", [](Interpreter& in, Value& v, CallArgs& a) { return select_impl(in, v, a, false, false); }},
      {"rejectattr",
       [](Interpreter& in, Value& v, CallArgs& a) { return select_impl(in, v, a, true, false); }},
      {"replace", f_replace},
      {"reverse", f_reverse},
      {"round", f_round},
      {"safe",
       [](Interpreter&, Value& v, CallArgs&) {
         Value m = Value::string(to_str(v));
         m.is_markup = true;
         return m;
       }},
      {"select", [](Interpreter& in, Value& v, CallArgs& a) { return select_impl(in, v, a, false, true); }},
      {"selectattr",
       [](Interpreter& in, Value& v, CallArgs& a) { return select_impl(in, v, a, true, true); }},
      {"sort", f_sort},
      {"string", [](Interpreter&, Value& v, CallArgs&) { return Value::string(to_str(v)); }},
      {"sum", f_sum},
      {"title", f_title},
      {"tojson", f_tojson},
      {"trim", f_trim},
      {"unique", f_unique},
      {"upper", [](Interpreter&, Value& v, CallArgs&) { return Value::string(py_upper(to_str(v))); }},
      {"wordcount", f_wordcount},
  };
  return table;
}

namespace {

const Value& test_arg(CallArgs& a, const char* test) {
  if (a.args.empty()) throw TemplateError(detail::str("test '", test, "' needs an argument"));
  return a.args[0];
}

// value % divisor == want, with Python's modulo (sign of the divisor; floats allowed).
bool py_mod_equals(const Value& v, const Value& divisor, int64_t want) {
  double x = as_double(v, "%"), d = as_double(divisor, "%");
  if (d == 0) throw TemplateError("integer division or modulo by zero");
  if (v.kind != Kind::Float && divisor.kind != Kind::Float) {
    int64_t xi = static_cast<int64_t>(x), di = static_cast<int64_t>(d);
    int64_t m = xi % di;
    if (m != 0 && ((m < 0) != (di < 0))) m += di;
    return m == want;
  }
  double m = std::fmod(x, d);
  if (m != 0 && ((m < 0) != (d < 0))) m += d;
  return m == static_cast<double>(want);
}

bool t_sequence(Interpreter&, const Value& v, CallArgs&) {
  // Undefined has __len__ and a class-level __getitem__, so jinja2 counts it a sequence.
  return v.is_string() || v.is_undefined() ||
         (v.is_list() && (v.iter == Iter::None || v.iter == Iter::Range)) || (v.is_dict() && !v.is_namespace);
}

}  // namespace

const std::map<std::string, TestFn>& tests() {
  static const std::map<std::string, TestFn> table = {
      {"defined", [](Interpreter&, const Value& v, CallArgs&) { return !v.is_undefined(); }},
      {"undefined", [](Interpreter&, const Value& v, CallArgs&) { return v.is_undefined(); }},
      {"none", [](Interpreter&, const Value& v, CallArgs&) { return v.is_none(); }},
      {"boolean", [](Interpreter&, const Value& v, CallArgs&) { return v.kind == Kind::Bool; }},
      {"true", [](Interpreter&, const Value& v, CallArgs&) { return v.kind == Kind::Bool && v.b; }},
      {"false", [](Interpreter&, const Value& v, CallArgs&) { return v.kind == Kind::Bool && !v.b; }},
      {"integer", [](Interpreter&, const Value& v, CallArgs&) { return v.kind == Kind::Int; }},
      {"float", [](Interpreter&, const Value& v, CallArgs&) { return v.kind == Kind::Float; }},
      {"number", [](Interpreter&, const Value& v, CallArgs&) { return v.is_number(); }},
      {"string", [](Interpreter&, const Value& v, CallArgs&) { return v.is_string(); }},
      {"mapping", [](Interpreter&, const Value& v, CallArgs&) { return v.is_dict() && !v.is_namespace; }},
      {"iterable",
       [](Interpreter&, const Value& v, CallArgs&) {
         return v.is_string() || v.is_list() || (v.is_dict() && !v.is_namespace) || v.is_undefined();
       }},
      {"sequence", t_sequence},
      {"callable", [](Interpreter&, const Value& v, CallArgs&) { return v.kind == Kind::Callable; }},
      {"escaped", [](Interpreter&, const Value&, CallArgs&) { return false; }},
      {"sameas",
       [](Interpreter&, const Value& v, CallArgs& a) {
         const Value& o = test_arg(a, "sameas");
         if (v.kind != o.kind) return false;
         if (v.is_list()) return v.list == o.list;
         if (v.is_dict()) return v.dict == o.dict;
         return equals(v, o);
       }},
      {"eq", [](Interpreter&, const Value& v, CallArgs& a) { return equals(v, test_arg(a, "eq")); }},
      {"equalto",
       [](Interpreter&, const Value& v, CallArgs& a) { return equals(v, test_arg(a, "equalto")); }},
      {"==", [](Interpreter&, const Value& v, CallArgs& a) { return equals(v, test_arg(a, "==")); }},
      {"ne", [](Interpreter&, const Value& v, CallArgs& a) { return !equals(v, test_arg(a, "ne")); }},
      {"!=", [](Interpreter&, const Value& v, CallArgs& a) { return !equals(v, test_arg(a, "!=")); }},
      {"lt", [](Interpreter&, const Value& v, CallArgs& a) { return less(v, test_arg(a, "lt")); }},
      {"lessthan",
       [](Interpreter&, const Value& v, CallArgs& a) { return less(v, test_arg(a, "lessthan")); }},
      {"<", [](Interpreter&, const Value& v, CallArgs& a) { return less(v, test_arg(a, "<")); }},
      {"le", [](Interpreter&, const Value& v, CallArgs& a) { return !less(test_arg(a, "le"), v); }},
      {"<=", [](Interpreter&, const Value& v, CallArgs& a) { return !less(test_arg(a, "<="), v); }},
      {"gt", [](Interpreter&, const Value& v, CallArgs& a) { return less(test_arg(a, "gt"), v); }},
      {"greaterthan",
       [](Interpreter&, const Value& v, CallArgs& a) { return less(test_arg(a, "greaterthan"), v); }},
      {">", [](Interpreter&, const Value& v, CallArgs& a) { return less(test_arg(a, ">"), v); }},
      {"ge", [](Interpreter&, const Value& v, CallArgs& a) { return !less(v, test_arg(a, "ge")); }},
      {">=", [](Interpreter&, const Value& v, CallArgs& a) { return !less(v, test_arg(a, ">=")); }},
      {"in", [](Interpreter&, const Value& v, CallArgs& a) { return contains(test_arg(a, "in"), v); }},
      {"odd", [](Interpreter&, const Value& v, CallArgs&) { return py_mod_equals(v, Value::integer(2), 1); }},
      {"even",
       [](Interpreter&, const Value& v, CallArgs&) { return py_mod_equals(v, Value::integer(2), 0); }},
      {"divisibleby", [](Interpreter&, const Value& v,
                         CallArgs& a) { return py_mod_equals(v, test_arg(a, "divisibleby"), 0); }},
      {"lower", [](Interpreter&, const Value& v, CallArgs&) { return py_islower(to_str(v)); }},
      {"upper", [](Interpreter&, const Value& v, CallArgs&) { return py_isupper(to_str(v)); }},
      {"filter",
       [](Interpreter&, const Value& v, CallArgs&) { return v.is_string() && filters().count(v.s) > 0; }},
      {"test",
       [](Interpreter&, const Value& v, CallArgs&) { return v.is_string() && tests().count(v.s) > 0; }},
  };
  return table;
}

}  // namespace nibble::jinja
