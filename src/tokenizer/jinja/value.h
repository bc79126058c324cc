// The Jinja interpreter's value: a Python object as a chat template sees it (None, bool, int,
// float, str, list/tuple, dict, namespace, callable) plus jinja2's Undefined. Lists, dicts and
// namespaces are shared by reference, as in Python, so `ns.x = ...` inside a loop is seen
// outside it. Printing follows Python's str()/repr() so `{{ [1, 'a'] }}` renders as jinja2 does.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "nibble/error.h"

namespace nibble::jinja {

// A runtime failure inside a template (jinja2's TemplateError, UndefinedError, TypeError, or
// the template's own raise_exception): the message is the template's or names the construct.
class TemplateError : public Error {
 public:
  using Error::Error;
};

struct Value;

// Bounds on one render, so that a hostile template (loops of loops, 'x' * 10**12, a width of a
// billion) ends in a TemplateError, never a hang or an out-of-memory kill. Real chat templates
// stay far below them: a long conversation takes thousands of steps and kilobytes of text.
inline constexpr int64_t kMaxRenderSteps = 100'000;         // statements, range items, calls; loop iterations
inline constexpr size_t kMaxStringBytes = size_t(4) << 20;  // one string, list or the output
inline constexpr int64_t kMaxRenderBytes = int64_t(1) << 28;  // bytes of strings made in all
// The render in progress on this thread (none outside Interpreter::render: no bounds).
struct RenderBudget {
  int64_t steps = 0, bytes = 0;
};
RenderBudget*& current_budget();
// `n` steps of the current render; TemplateError past kMaxRenderSteps.
void charge_step(int64_t n = 1);
// A string of n bytes made; TemplateError past kMaxStringBytes, or kMaxRenderBytes in all.
void charge_bytes(size_t n);
// TemplateError when a string or list of n bytes / items (`what` names the operation) would
// pass kMaxStringBytes; checked before it is built.
void check_size(double n, const char* what);
// Lists and dicts nest at most kMaxNesting deep: printing, comparing, converting and freeing a
// value recurse once per level, so a template (or a caller's JSON) nesting 100,000 deep would
// overflow the stack. Checked when a list or dict is built.
inline constexpr uint32_t kMaxNesting = 1000;
using List = std::vector<Value>;
// Insertion-ordered, as Python dicts are; chat dicts are small, so lookup is linear.
using Dict = std::vector<std::pair<std::string, Value>>;

// Arguments of a call: positional then keyword, as written at the call site.
struct CallArgs {
  std::vector<Value> args;
  std::vector<std::pair<std::string, Value>> kwargs;
};
using Function = std::function<Value(CallArgs&)>;
// Argument `pos` of a call, or the keyword argument `name`; null when neither was given.
const Value* call_arg(CallArgs& a, size_t pos, const char* name);

enum class Kind { Undefined, None, Bool, Int, Float, String, Array, Map, Callable };

// What Python object an Array stands for besides list/tuple: jinja2's map/select/... filters
// return generators (single pass, always true, no len(), not JSON), reverse returns a list
// iterator, dict.items()/keys()/values() return views, range() a range. Templates can tell
// these apart (`{% if xs|select(...) %}` is always true), so the interpreter keeps track.
enum class Iter : uint8_t { None, Generator, Reverse, DictItems, DictKeys, DictValues, Range };

struct Value {
  Kind kind = Kind::Undefined;
  bool b = false;
  bool is_tuple = false;      // a List that Python would print as (a, b)
  bool is_namespace = false;  // a Dict made by namespace(): attribute assignment allowed
  bool is_markup = false;
  Iter iter = Iter::None;
  std::shared_ptr<size_t> cursor;  // Generator / Reverse: items already consumed     // a String that is
                                   // markupsafe.Markup (from |safe, |escape): `+` escapes the other side
  uint32_t nest = 0;               // Array/Map: 1 + the deepest nesting of an item (kMaxNesting at most)
  int64_t i = 0;
  double f = 0;
  std::string s;  // String text (UTF-8); for Undefined, the name that was missing (for errors)
  std::shared_ptr<List> list;
  std::shared_ptr<Dict> dict;
  std::shared_ptr<Function> fn;

  Value() = default;
  static Value undefined(std::string name = "") {
    Value v;
    v.s = std::move(name);
    return v;
  }
  static Value none() {
    Value v;
    v.kind = Kind::None;
    return v;
  }
  static Value boolean(bool x) {
    Value v;
    v.kind = Kind::Bool;
    v.b = x;
    return v;
  }
  static Value integer(int64_t x) {
    Value v;
    v.kind = Kind::Int;
    v.i = x;
    return v;
  }
  static Value real(double x) {
    Value v;
    v.kind = Kind::Float;
    v.f = x;
    return v;
  }
  static Value string(std::string x) {
    charge_bytes(x.size());
    Value v;
    v.kind = Kind::String;
    v.s = std::move(x);
    return v;
  }
  static Value make_list(List items = {}, bool tuple = false) {
    Value v;
    v.kind = Kind::Array;
    v.nest = nest_of(items);
    v.list = std::make_shared<List>(std::move(items));
    v.is_tuple = tuple;
    return v;
  }
  static Value make_iter(List items, Iter kind) {
    Value v = make_list(std::move(items));
    v.iter = kind;
    if (kind == Iter::Generator || kind == Iter::Reverse) v.cursor = std::make_shared<size_t>(0);
    return v;
  }
  static Value make_dict(Dict items = {}) {
    Value v;
    v.kind = Kind::Map;
    v.nest = nest_of(items);
    v.dict = std::make_shared<Dict>(std::move(items));
    return v;
  }
  static Value function(Function f) {
    Value v;
    v.kind = Kind::Callable;
    v.fn = std::make_shared<Function>(std::move(f));
    return v;
  }

  bool is_undefined() const { return kind == Kind::Undefined; }
  bool is_none() const { return kind == Kind::None; }
  bool is_string() const { return kind == Kind::String; }
  bool is_list() const { return kind == Kind::Array; }
  bool is_plain_list() const { return kind == Kind::Array && iter == Iter::None; }
  bool single_pass() const { return cursor != nullptr; }
  bool is_dict() const { return kind == Kind::Map; }
  bool is_number() const { return kind == Kind::Int || kind == Kind::Float || kind == Kind::Bool; }

  // 1 + the deepest item; TemplateError beyond kMaxNesting.
  static uint32_t nest_of(const List& items);
  static uint32_t nest_of(const Dict& items);

  // Dict lookup; nullptr when absent (or not a dict).
  const Value* find(const std::string& key) const;
  void set(const std::string& key, Value v);  // dict insert-or-assign
};

// Dict keys are strings; an int key (`{512: 128}`) is stored under an encoded string so the
// ordered string-keyed Dict serves both. key_of encodes (str or int, else UnsupportedError),
// key_value decodes back to the Python key.
std::string key_of(const Value& key);
Value key_value(const std::string& stored);

// Python's type name ("str", "int", "list", "dict", "NoneType", ...), for error messages.
std::string type_name(const Value& v);
// Python truthiness; Undefined is false.
bool truthy(const Value& v);
// str(v) as jinja2 prints it ({{ v }}): Undefined prints empty, None "None", lists repr().
std::string to_str(const Value& v);
// repr(v) as Python writes it.
std::string repr(const Value& v);
// Python's float repr: shortest round-trip digits, "1.0", "1e+16", "inf".
std::string float_repr(double x);
// Python == (1 == 1.0, lists/dicts deep, different kinds unequal).
bool equals(const Value& a, const Value& b);
// Python <: numbers with numbers, strings with strings, lists lexicographically; else TypeError.
bool less(const Value& a, const Value& b);
// Numeric view of int/float/bool; throws TemplateError naming `what` otherwise.
double as_double(const Value& v, const char* what);

// nlohmann JSON (either flavour) to Value: objects keep their key order.
Value from_json(const nlohmann::ordered_json& j);
Value from_json(const nlohmann::json& j);
// json.dumps(v, ensure_ascii=False, indent=indent, separators=...) as transformers' tojson
// calls it; indent < 0 means None. Throws TemplateError for values JSON cannot hold.
// ensure_ascii escapes every character outside ' '..'~' as \uXXXX (surrogate pairs above the BMP).
std::string to_json(const Value& v, int indent, const std::string& item_sep, const std::string& key_sep,
                    bool ensure_ascii = false);

// markupsafe.escape: & < > " ' become entities; the result is Markup.
Value html_escape(const Value& v);

// UTF-8 helpers: strings are indexed, sliced and measured in code points, as Python does.
std::vector<std::string> utf8_chars(const std::string& s);
size_t utf8_length(const std::string& s);

}  // namespace nibble::jinja
