// The Jinja interpreter: renders a parsed template against a set of variables, with jinja2's
// semantics as transformers configures them (ImmutableSandboxedEnvironment, default
// Undefined, loopcontrols, tojson overridden, raise_exception / strftime_now globals).
//
//   Template t(source);                  // lexes and parses; FormatError / UnsupportedError
//   std::string s = t.render(vars);      // TemplateError on a runtime failure
#pragma once

#include <map>
#include <memory>
#include <string>
#include <unordered_map>

#include "tokenizer/jinja/ast.h"
#include "tokenizer/jinja/value.h"

namespace nibble::jinja {

// raise_exception(msg) from the template: what() is the template's message unchanged.
class RaisedError : public TemplateError {
 public:
  using TemplateError::TemplateError;
};

// Variables visible at one level: the template's globals, a loop iteration, a macro call.
struct Scope {
  std::unordered_map<std::string, Value> vars;
  Scope* parent = nullptr;
  // Cleared when the scope ends, so a macro that outlives the loop iteration defining it
  // (stored in a namespace) fails cleanly instead of reading a dead scope.
  std::shared_ptr<bool> alive = std::make_shared<bool>(true);
  ~Scope() { *alive = false; }

  const Value* lookup(const std::string& name) const {
    for (const Scope* s = this; s; s = s->parent) {
      auto it = s->vars.find(name);
      if (it != s->vars.end()) return &it->second;
    }
    return nullptr;
  }
};

class Interpreter;
using FilterFn = Value (*)(Interpreter&, Value&, CallArgs&);
using TestFn = bool (*)(Interpreter&, const Value&, CallArgs&);

// Registries of filters and tests (builtins.cpp), keyed by jinja2's names.
const std::map<std::string, FilterFn>& filters();
const std::map<std::string, TestFn>& tests();
// Attribute `name` of `obj` as the sandbox resolves it: a bound method of str/dict/list, a
// namespace or dict entry, or Undefined. Throws for attributes of Undefined.
Value get_attr(const Value& obj, const std::string& name);
// obj[key] with jinja2's fallback to attributes.
Value get_item(const Value& obj, const Value& key);
// The template globals jinja2 and transformers provide (range, namespace, dict, raise_exception, ...).
void add_globals(Scope& scope);
// Python's `x in container`.
bool contains(const Value& container, const Value& x);
// The items of an iterable (list items, dict keys, string characters); Undefined is empty.
List iterate(const Value& v);
// Python's `fmt % args` (printf-style) for the `%` operator and the `format` filter.
std::string percent_format(const std::string& fmt, const Value& args);

class Interpreter {
 public:
  std::string render(const Body& body, Scope& globals);

  Value eval(const Expr& e, Scope& s);
  Value call(const Value& fn, CallArgs& args, int line);
  Value apply_filter(const std::string& name, Value v, CallArgs& args, int line);
  bool apply_test(const std::string& name, const Value& v, CallArgs& args, int line);

 private:
  enum class Flow { Normal, Break, Continue };
  Flow exec(const Body& body, Scope& s, std::string& out);
  Flow exec_node(const Node& n, Scope& s, std::string& out);
  Flow exec_for(const Node& n, Scope& s, std::string& out);
  void exec_set(const Node& n, Scope& s);
  Value make_macro(const Node& n, Scope& s);
  Value binary(const Expr& e, Scope& s);
  CallArgs eval_args(const Expr& e, Scope& s, size_t first);
  int depth_ = 0;
};

// Prefixes a runtime error with its template line, once.
[[noreturn]] void rethrow_with_line(const TemplateError& err, int line);
[[noreturn]] void rethrow_unsupported_with_line(const UnsupportedError& err, int line);

}  // namespace nibble::jinja
