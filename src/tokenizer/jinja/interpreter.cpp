// Tree-walking evaluator. Scoping follows jinja2: `if` shares its scope, each for-loop
// iteration and each macro call gets a fresh one (a `set` inside a loop is gone at the next
// iteration — hence namespace()), and `loop` describes the innermost loop. Operators follow
// Python (int/int `/` gives float, `//` and `%` floor, `~` joins str() of both sides).
#include "tokenizer/jinja/interpreter.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <utility>

namespace nibble::jinja {

void rethrow_with_line(const TemplateError& err, int line) {
  if (dynamic_cast<const RaisedError*>(&err)) throw;
  std::string msg = err.what();
  if (msg.rfind("chat template line ", 0) == 0) throw;
  throw TemplateError(detail::str("chat template line ", line, ": ", msg));
}

void rethrow_unsupported_with_line(const UnsupportedError& err, int line) {
  std::string msg = err.what();
  if (msg.rfind("chat template line ", 0) == 0) throw;
  throw UnsupportedError(detail::str("chat template line ", line, ": ", msg));
}

std::string Interpreter::render(const Body& body, Scope& globals) {
  RenderBudget budget;
  struct Active {  // this render's budget while it runs (an enclosing one's again after)
    RenderBudget* outer;
    explicit Active(RenderBudget* b) : outer(std::exchange(current_budget(), b)) {}
    ~Active() { current_budget() = outer; }
  } active(&budget);
  std::string out;
  exec(body, globals, out);
  return out;
}

Interpreter::Flow Interpreter::exec(const Body& body, Scope& s, std::string& out) {
  for (const auto& n : body) {
    Flow f;
    try {
      f = exec_node(*n, s, out);
    } catch (const TemplateError& e) {  // errors from deeper nodes already carry their line
      rethrow_with_line(e, n->line);
    } catch (const UnsupportedError& e) {
      rethrow_unsupported_with_line(e, n->line);
    }
    if (f != Flow::Normal) return f;
  }
  return Flow::Normal;
}

Interpreter::Flow Interpreter::exec_node(const Node& n, Scope& s, std::string& out) {
  charge_step();
  switch (n.kind) {
    case NodeKind::Text:
      out += n.text;
      check_size(double(out.size()), "the rendered text");
      return Flow::Normal;
    case NodeKind::Output:
      out += to_str(eval(*n.expr, s));
      check_size(double(out.size()), "the rendered text");
      return Flow::Normal;
    case NodeKind::If:
      for (size_t k = 0; k < n.conds.size(); ++k)
        if (truthy(eval(*n.conds[k], s))) return exec(n.bodies[k], s, out);
      if (n.bodies.size() > n.conds.size()) return exec(n.bodies.back(), s, out);
      return Flow::Normal;
    case NodeKind::For:
      return exec_for(n, s, out);
    case NodeKind::Set:
      exec_set(n, s);
      return Flow::Normal;
    case NodeKind::Macro:
      s.vars[n.name] = make_macro(n, s);
      return Flow::Normal;
    case NodeKind::CallBlock: {
      // The body becomes `caller`, a macro taking the call block's parameters.
      Value caller = make_macro(n, s);
      const Expr& call_expr = *n.expr;
      Value fn = eval(*call_expr.children[0], s);
      CallArgs args = eval_args(call_expr, s, 1);
      args.kwargs.emplace_back("caller", caller);
      out += to_str(call(fn, args, n.line));
      return Flow::Normal;
    }
    case NodeKind::Break:
      return Flow::Break;
    case NodeKind::Continue:
      return Flow::Continue;
    case NodeKind::FilterBlock: {
      std::string inner;
      Scope local{{}, &s};
      exec(n.body, local, inner);
      // Evaluate the filter chain with the rendered body as the innermost operand.
      std::function<Value(const Expr&)> apply = [&](const Expr& f) -> Value {
        Value v = f.children[0] ? apply(*f.children[0]) : Value::string(inner);
        CallArgs a = eval_args(f, s, 1);
        return apply_filter(f.name, v, a, f.line);
      };
      out += to_str(apply(*n.expr));
      return Flow::Normal;
    }
    case NodeKind::With: {
      Scope local{{}, &s};
      for (size_t k = 0; k < n.targets.size(); ++k) local.vars[n.targets[k]] = eval(*n.values[k], s);
      return exec(n.body, local, out);
    }
    case NodeKind::Scope:
      return exec(n.body, s, out);
  }
  return Flow::Normal;
}

static bool reads_name(const Body& body, const std::string& name);

static void assign(Scope& s, const Node& n, const Value& v) {
  if (!n.tuple_target) {
    s.vars[n.targets[0]] = v;
    return;
  }
  List items = iterate(v);
  if (items.size() != n.targets.size())
    throw TemplateError(
        detail::str("cannot unpack ", items.size(), " values into ", n.targets.size(), " names"));
  for (size_t k = 0; k < items.size(); ++k) s.vars[n.targets[k]] = items[k];
}

Interpreter::Flow Interpreter::exec_for(const Node& n, Scope& s, std::string& out) {
  Value seq = eval(*n.expr, s);
  if (seq.is_none() || seq.kind == Kind::Int || seq.kind == Kind::Float || seq.kind == Kind::Bool)
    throw TemplateError(
        detail::str("chat template line ", n.line, ": '", type_name(seq), "' object is not iterable"));
  List items = iterate(seq);
  if (n.cond) {  // `for x in xs if cond`: filtered before the loop, so loop.length counts survivors
    List kept;
    for (const Value& it : items) {
      Scope probe{{}, &s};
      assign(probe, n, it);
      if (truthy(eval(*n.cond, probe))) kept.push_back(it);
    }
    items = std::move(kept);
  }
  const int64_t len = static_cast<int64_t>(items.size());
  const bool uses_loop = reads_name(n.body, "loop");  // most bodies do not: no `loop` object to build
  for (int64_t k = 0; k < len; ++k) {
    charge_step();
    Scope local{{}, &s};
    assign(local, n, items[k]);
    if (!uses_loop) {
      if (exec(n.body, local, out) == Flow::Break) break;
      continue;
    }
    charge_step(30);  // building `loop` costs about as much as thirty plain steps
    Value loop = Value::make_dict({
        {"index", Value::integer(k + 1)},
        {"index0", Value::integer(k)},
        {"revindex", Value::integer(len - k)},
        {"revindex0", Value::integer(len - k - 1)},
        {"first", Value::boolean(k == 0)},
        {"last", Value::boolean(k == len - 1)},
        {"length", Value::integer(len)},
        {"depth", Value::integer(1)},
        {"depth0", Value::integer(0)},
        {"previtem", k > 0 ? items[k - 1] : Value::undefined("loop.previtem")},
        {"nextitem", k + 1 < len ? items[k + 1] : Value::undefined("loop.nextitem")},
    });
    loop.set("cycle", Value::function([k](CallArgs& a) -> Value {
               if (a.args.empty()) throw TemplateError("no items for cycling given");
               return a.args[k % a.args.size()];
             }));
    local.vars["loop"] = loop;
    Flow f = exec(n.body, local, out);
    if (f == Flow::Break) break;
  }
  if (len == 0 && !n.else_body.empty()) {
    // The else body runs after the loop: a break/continue there belongs to an enclosing loop.
    Scope local{{}, &s};
    return exec(n.else_body, local, out);
  }
  return Flow::Normal;
}

void Interpreter::exec_set(const Node& n, Scope& s) {
  if (!n.attr.empty()) {
    const Value* ns = s.lookup(n.targets[0]);
    if (!ns || !ns->is_namespace)
      throw TemplateError(detail::str("chat template line ", n.line,
                                      ": cannot assign attribute on non-namespace object '", n.targets[0],
                                      "'"));
    Value target = *ns;  // shares the namespace's dict
    target.set(n.attr, eval(*n.expr, s));
    return;
  }
  if (n.expr) {
    assign(s, n, eval(*n.expr, s));
    return;
  }
  std::string inner;
  Scope local{{}, &s};
  exec(n.body, local, inner);
  Value v = Value::string(inner);
  if (n.cond) {
    std::function<Value(const Expr&)> apply = [&](const Expr& f) -> Value {
      Value x = f.children[0] ? apply(*f.children[0]) : v;
      CallArgs a = eval_args(f, s, 1);
      return apply_filter(f.name, x, a, f.line);
    };
    v = apply(*n.cond);
  }
  s.vars[n.targets[0]] = v;
}

// Whether `name` is read anywhere under the node or expression (jinja2's find_undeclared):
// a macro accepts extra positional / keyword arguments or a caller only if its body reads
// varargs / kwargs / caller.
static bool reads_name(const Expr& e, const std::string& name);

static bool reads_name(const Expr& e, const std::string& name) {
  if (e.kind == ExprKind::Name && e.name == name) return true;
  for (const auto& c : e.children)
    if (c && reads_name(*c, name)) return true;
  for (const auto& kv : e.kwargs)
    if (kv.second && reads_name(*kv.second, name)) return true;
  return false;
}

static bool reads_name(const Body& body, const std::string& name) {
  for (const auto& n : body) {
    for (const Expr* e : {n->expr.get(), n->cond.get()})
      if (e && reads_name(*e, name)) return true;
    for (const auto& e : n->conds)
      if (reads_name(*e, name)) return true;
    for (const auto& e : n->values)
      if (reads_name(*e, name)) return true;
    for (const auto& p : n->params)
      if (p.second && reads_name(*p.second, name)) return true;
    for (const auto& b : n->bodies)
      if (reads_name(b, name)) return true;
    if (reads_name(n->body, name) || reads_name(n->else_body, name)) return true;
  }
  return false;
}

Value Interpreter::make_macro(const Node& n, Scope& s) {
  const Node* node = &n;
  Scope* defining = &s;
  std::shared_ptr<bool> alive = s.alive;
  const bool takes_varargs = reads_name(n.body, "varargs"), takes_kwargs = reads_name(n.body, "kwargs"),
             takes_caller = reads_name(n.body, "caller");
  return Value::function([this, node, defining, alive, takes_varargs, takes_kwargs,
                          takes_caller](CallArgs& a) -> Value {
    const std::string mname = node->name.empty() ? "caller" : node->name;
    if (!*alive)
      throw UnsupportedError(detail::str("calling macro '", node->name.empty() ? "caller" : node->name,
                                         "' after the scope that defined it ended"));
    charge_step();
    if (++depth_ > 200) {
      depth_ = 0;
      throw TemplateError("macro recursion too deep");
    }
    Scope local{{}, defining};
    size_t np = node->params.size();
    List varargs;
    if (a.args.size() > np && !takes_varargs)
      throw TemplateError(detail::str("macro '", mname, "' takes not more than ", np, " argument(s)"));
    for (size_t k = 0; k < a.args.size(); ++k) {
      if (k < np)
        local.vars[node->params[k].first] = a.args[k];
      else
        varargs.push_back(a.args[k]);
    }
    Dict extra;
    for (auto& [key, v] : a.kwargs) {
      bool is_param = false;
      for (const auto& p : node->params) is_param = is_param || p.first == key;
      if (is_param && local.vars.count(key))
        throw TemplateError(detail::str("macro '", mname, "' got multiple values for argument '", key, "'"));
      if (is_param)
        local.vars[key] = v;
      else if (key == "caller" && takes_caller)
        local.vars["caller"] = v;
      else if (takes_kwargs)
        extra.emplace_back(key, v);
      else
        throw TemplateError(detail::str("macro '", mname, "' takes no keyword argument '", key, "'"));
    }
    for (const auto& [pname, def] : node->params)
      if (!local.vars.count(pname))
        local.vars[pname] = def ? eval(*def, local) : Value::undefined("'" + pname + "' is undefined");
    if (takes_caller && !local.vars.count("caller"))
      local.vars["caller"] = Value::undefined("No caller defined");
    local.vars["varargs"] = Value::make_list(varargs, true);
    local.vars["kwargs"] = Value::make_dict(extra);
    std::string out;
    exec(node->body, local, out);
    --depth_;
    return Value::string(out);
  });
}

CallArgs Interpreter::eval_args(const Expr& e, Scope& s, size_t first) {
  CallArgs a;
  for (size_t k = first; k < e.children.size(); ++k) a.args.push_back(eval(*e.children[k], s));
  for (const auto& [key, x] : e.kwargs) a.kwargs.emplace_back(key, eval(*x, s));
  return a;
}

Value Interpreter::call(const Value& fn, CallArgs& args, int line) {
  if (fn.kind != Kind::Callable) {
    if (fn.is_undefined())
      throw TemplateError(
          detail::str("chat template line ", line, ": ", fn.s.empty() ? "value is undefined" : fn.s));
    throw TemplateError(
        detail::str("chat template line ", line, ": '", type_name(fn), "' object is not callable"));
  }
  try {
    return (*fn.fn)(args);
  } catch (const TemplateError& e) {
    rethrow_with_line(e, line);
  } catch (const UnsupportedError& e) {
    rethrow_unsupported_with_line(e, line);
  }
}

Value Interpreter::apply_filter(const std::string& name, Value v, CallArgs& args, int line) {
  auto it = filters().find(name);
  if (it == filters().end())
    throw UnsupportedError(
        detail::str("chat template line ", line, ": filter '", name, "' is not supported"));
  try {
    return it->second(*this, v, args);
  } catch (const TemplateError& e) {
    rethrow_with_line(e, line);
  } catch (const UnsupportedError& e) {
    rethrow_unsupported_with_line(e, line);
  }
}

bool Interpreter::apply_test(const std::string& name, const Value& v, CallArgs& args, int line) {
  auto it = tests().find(name);
  if (it == tests().end())
    throw UnsupportedError(detail::str("chat template line ", line, ": test '", name, "' is not supported"));
  try {
    return it->second(*this, v, args);
  } catch (const TemplateError& e) {
    rethrow_with_line(e, line);
  } catch (const UnsupportedError& e) {
    rethrow_unsupported_with_line(e, line);
  }
}

// One comparison of a chain; Undefined operands of an ordering raise UndefinedError in jinja2.
static bool compare(const std::string& op, const Value& a, const Value& b, int line) {
  try {
    if (op == "==") return equals(a, b);
    if (op == "!=") return !equals(a, b);
    if (op == "<") return less(a, b);
    if (op == ">") return less(b, a);
    if (op == "<=") return !less(b, a);
    if (op == ">=") return !less(a, b);
    if (op == "in") return contains(b, a);
    if (op == "not in") return !contains(b, a);
  } catch (const TemplateError& err) {
    if (a.is_undefined()) throw TemplateError(detail::str("chat template line ", line, ": ", a.s));
    if (b.is_undefined()) throw TemplateError(detail::str("chat template line ", line, ": ", b.s));
    rethrow_with_line(err, line);
  }
  throw UnsupportedError(
      detail::str("chat template line ", line, ": comparison '", op, "' is not supported"));
}

static Value slice_of(const Value& obj, const Value& a, const Value& b, const Value& c, int line) {
  auto idx = [&](const Value& v, const char* what) -> std::optional<int64_t> {
    if (v.is_none() || v.is_undefined()) return std::nullopt;
    if (v.kind != Kind::Int && v.kind != Kind::Bool)
      throw TemplateError(detail::str("chat template line ", line, ": slice ", what, " must be an integer"));
    return v.kind == Kind::Bool ? v.b : v.i;
  };
  std::optional<int64_t> start = idx(a, "start"), stop = idx(b, "stop"), step_o = idx(c, "step");
  int64_t step = step_o.value_or(1);
  if (step == 0) throw TemplateError(detail::str("chat template line ", line, ": slice step cannot be zero"));
  List src;
  std::vector<std::string> chars;
  if (obj.is_string()) {
    chars = utf8_chars(obj.s);
  } else if (obj.is_list() && (obj.iter == Iter::None || obj.iter == Iter::Range)) {
    src = *obj.list;
  } else {  // a slice is a plain Python subscript in jinja2's compiled code: TypeError
    throw TemplateError(detail::str("chat template line ", line, ": ",
                                    obj.is_dict() ? std::string("unhashable type: 'slice'")
                                                  : "'" + type_name(obj) + "' object is not subscriptable"));
  }
  const int64_t n = obj.is_string() ? static_cast<int64_t>(chars.size()) : static_cast<int64_t>(src.size());
  // Python's slice.indices().
  auto norm = [&](std::optional<int64_t> x, int64_t def_pos, int64_t def_neg) {
    if (!x) return step > 0 ? def_pos : def_neg;
    int64_t v = *x;
    if (v < 0) v += n;
    if (step > 0) return std::clamp<int64_t>(v, 0, n);
    return std::clamp<int64_t>(v, -1, n - 1);
  };
  int64_t lo = norm(start, 0, n - 1), hi = norm(stop, n, -1);
  std::string s;
  List out;
  for (int64_t k = lo; step > 0 ? k < hi : k > hi; k += step) {
    if (obj.is_string())
      s += chars[k];
    else
      out.push_back(src[k]);
  }
  if (obj.is_string()) return Value::string(s);
  if (obj.iter == Iter::Range) return Value::make_iter(std::move(out), Iter::Range);  // a range, repr unknown
  return Value::make_list(std::move(out), obj.is_tuple);
}

Value Interpreter::eval(const Expr& e, Scope& s) {
  switch (e.kind) {
    case ExprKind::Literal:
      return e.value;
    case ExprKind::Name: {
      const Value* v = s.lookup(e.name);
      return v ? *v : Value::undefined(detail::str("'", e.name, "' is undefined"));
    }
    case ExprKind::GetAttr: {
      Value obj = eval(*e.children[0], s);
      try {
        return get_attr(obj, e.name);
      } catch (const TemplateError& err) {
        rethrow_with_line(err, e.line);
      }
    }
    case ExprKind::GetItem: {
      Value obj = eval(*e.children[0], s);
      Value key = eval(*e.children[1], s);
      try {
        return get_item(obj, key);
      } catch (const TemplateError& err) {
        rethrow_with_line(err, e.line);
      }
    }
    case ExprKind::Slice: {
      Value obj = eval(*e.children[0], s);
      if (obj.is_undefined()) throw TemplateError(detail::str("chat template line ", e.line, ": ", obj.s));
      Value parts[3];
      for (int k = 0; k < 3; ++k)
        if (e.children[k + 1]) parts[k] = eval(*e.children[k + 1], s);
      return slice_of(obj, parts[0], parts[1], parts[2], e.line);
    }
    case ExprKind::Call: {
      Value fn = eval(*e.children[0], s);
      CallArgs a = eval_args(e, s, 1);
      if (fn.is_undefined()) {
        std::string what = fn.s.empty() ? "value is undefined" : fn.s;
        throw TemplateError(detail::str("chat template line ", e.line, ": ", what));
      }
      return call(fn, a, e.line);
    }
    case ExprKind::Filter: {
      Value v = eval(*e.children[0], s);
      CallArgs a = eval_args(e, s, 1);
      return apply_filter(e.name, v, a, e.line);
    }
    case ExprKind::Test: {
      Value v = eval(*e.children[0], s);
      CallArgs a = eval_args(e, s, 1);
      return Value::boolean(apply_test(e.name, v, a, e.line) != e.negated);
    }
    case ExprKind::Unary: {
      Value v = eval(*e.children[0], s);
      if (e.name == "not") return Value::boolean(!truthy(v));
      if (v.kind == Kind::Int || v.kind == Kind::Bool) {
        int64_t x = v.kind == Kind::Bool ? v.b : v.i;
        return Value::integer(e.name == "-" ? -x : x);
      }
      if (v.kind == Kind::Float) return Value::real(e.name == "-" ? -v.f : v.f);
      throw TemplateError(detail::str("chat template line ", e.line, ": bad operand type for unary ", e.name,
                                      ": '", type_name(v), "'"));
    }
    case ExprKind::Binary:
      return binary(e, s);
    case ExprKind::Compare: {
      Value left = eval(*e.children[0], s);
      for (size_t k = 0; k < e.ops.size(); ++k) {
        Value right = eval(*e.children[k + 1], s);
        if (!compare(e.ops[k], left, right, e.line)) return Value::boolean(false);
        left = std::move(right);
      }
      return Value::boolean(true);
    }
    case ExprKind::CondExpr: {
      if (truthy(eval(*e.children[1], s))) return eval(*e.children[0], s);
      if (e.children[2]) return eval(*e.children[2], s);
      return Value::undefined("the inline if-expression on line " + std::to_string(e.line) +
                              " evaluated to false and no else section was defined.");
    }
    case ExprKind::ListLit: {
      List items;
      for (const auto& c : e.children) items.push_back(eval(*c, s));
      return Value::make_list(std::move(items), e.tuple);
    }
    case ExprKind::DictLit: {
      Value d = Value::make_dict();
      for (size_t k = 0; k + 1 < e.children.size(); k += 2) {
        Value key = eval(*e.children[k], s);
        if (!key.is_string() && key.kind != Kind::Int)
          throw UnsupportedError(detail::str("chat template line ", e.line, ": dict literal keys of type ",
                                             type_name(key), " are not supported"));
        d.set(key_of(key), eval(*e.children[k + 1], s));
      }
      return d;
    }
  }
  return Value();
}

static int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  if ((a % b != 0) && ((a < 0) != (b < 0))) --q;
  return q;
}

Value Interpreter::binary(const Expr& e, Scope& s) {
  const std::string& op = e.name;
  if (op == "and") {
    Value a = eval(*e.children[0], s);
    return truthy(a) ? eval(*e.children[1], s) : a;
  }
  if (op == "or") {
    Value a = eval(*e.children[0], s);
    return truthy(a) ? a : eval(*e.children[1], s);
  }
  Value a = eval(*e.children[0], s);
  Value b = eval(*e.children[1], s);
  auto fail = [&]() -> Value {
    if (a.is_undefined()) throw TemplateError(detail::str("chat template line ", e.line, ": ", a.s));
    if (b.is_undefined()) throw TemplateError(detail::str("chat template line ", e.line, ": ", b.s));
    throw TemplateError(detail::str("chat template line ", e.line, ": unsupported operand type(s) for ", op,
                                    ": '", type_name(a), "' and '", type_name(b), "'"));
  };
  if (op == "~") return Value::string(to_str(a) + to_str(b));
  bool ints = (a.kind == Kind::Int || a.kind == Kind::Bool) && (b.kind == Kind::Int || b.kind == Kind::Bool);
  int64_t ai = a.kind == Kind::Bool ? a.b : a.i, bi = b.kind == Kind::Bool ? b.b : b.i;
  bool nums = a.is_number() && b.is_number();
  double af = nums ? as_double(a, op.c_str()) : 0, bf = nums ? as_double(b, op.c_str()) : 0;
  int64_t r = 0;
  auto overflow = [&]() -> Value {
    throw UnsupportedError(detail::str("chat template line ", e.line, ": integer result of '", op,
                                       "' beyond 64 bits (Python integers are unbounded)"));
  };
  if (op == "+") {
    if (ints) return __builtin_add_overflow(ai, bi, &r) ? overflow() : Value::integer(r);
    if (nums) return Value::real(af + bf);
    if (a.is_string() && b.is_string()) {
      if (!a.is_markup && !b.is_markup) return Value::string(a.s + b.s);
      // Markup + str escapes the str (markupsafe), even with autoescape off.
      Value m = Value::string(html_escape(a).s + html_escape(b).s);
      m.is_markup = true;
      return m;
    }
    if (a.is_plain_list() && b.is_plain_list() && a.is_tuple == b.is_tuple) {
      double bytes = 0;  // as for '*': doubling a list in a loop must stop at the bound
      for (const List* l : {a.list.get(), b.list.get()})
        for (const Value& x : *l) bytes += double(sizeof(Value) + x.s.size());
      check_size(bytes, "'+'");
      List items = *a.list;
      items.insert(items.end(), b.list->begin(), b.list->end());
      return Value::make_list(std::move(items), a.is_tuple);
    }
    return fail();
  }
  if (op == "-") {
    if (ints) return __builtin_sub_overflow(ai, bi, &r) ? overflow() : Value::integer(r);
    if (nums) return Value::real(af - bf);
    return fail();
  }
  if (op == "*") {
    if (ints) return __builtin_mul_overflow(ai, bi, &r) ? overflow() : Value::integer(r);
    if (nums) return Value::real(af * bf);
    const Value* seq = a.is_string() || a.is_plain_list() ? &a : &b;
    const Value* cnt = seq == &a ? &b : &a;
    if ((seq->is_string() || seq->is_plain_list()) && (cnt->kind == Kind::Int || cnt->kind == Kind::Bool)) {
      int64_t times = cnt->kind == Kind::Bool ? cnt->b : cnt->i;
      if (seq->is_string() ? seq->s.empty() : seq->list->empty()) times = 0;  // '' * 10**9: no loop
      // A list's bytes as copied: each item a Value, a string item with its text (a nested list
      // is shared), so ['x' * 4000000] * 1000 is refused too.
      double unit = double(seq->is_string() ? seq->s.size() : 0);
      if (!seq->is_string())
        for (const Value& x : *seq->list) unit += double(sizeof(Value) + x.s.size());
      check_size(double(times) * unit, "'*'");
      if (seq->is_string()) {
        std::string rep;
        rep.reserve(size_t(std::max<int64_t>(times, 0)) * seq->s.size());
        for (int64_t k = 0; k < times; ++k) rep.append(seq->s);
        return Value::string(rep);
      }
      List items;
      for (int64_t k = 0; k < times; ++k) items.insert(items.end(), seq->list->begin(), seq->list->end());
      return Value::make_list(std::move(items), seq->is_tuple);
    }
    return fail();
  }
  if (op == "/") {
    if (!nums) return fail();
    if (bf == 0) throw TemplateError(detail::str("chat template line ", e.line, ": division by zero"));
    return Value::real(af / bf);
  }
  if (op == "//") {
    if (!nums) return fail();
    if (bf == 0)
      throw TemplateError(detail::str("chat template line ", e.line, ": integer division or modulo by zero"));
    if (ints) return Value::integer(floor_div(ai, bi));
    return Value::real(std::floor(af / bf));
  }
  if (op == "%") {
    if (a.is_string()) {
      try {
        if (a.is_markup) {  // Markup % args escapes the arguments
          Value args = b;
          if (b.is_list() && b.is_tuple) {
            List esc;
            for (const Value& x : *b.list) esc.push_back(x.is_string() ? html_escape(x) : x);
            args = Value::make_list(std::move(esc), true);
          } else if (b.is_string()) {
            args = html_escape(b);
          }
          Value m = Value::string(percent_format(a.s, args));
          m.is_markup = true;
          return m;
        }
        return Value::string(percent_format(a.s, b));
      } catch (const TemplateError& err) {
        rethrow_with_line(err, e.line);
      } catch (const UnsupportedError& err) {
        rethrow_unsupported_with_line(err, e.line);
      }
    }
    if (!nums) return fail();
    if (bf == 0)
      throw TemplateError(detail::str("chat template line ", e.line, ": integer division or modulo by zero"));
    if (ints) return Value::integer(ai - floor_div(ai, bi) * bi);
    double m = std::fmod(af, bf);
    if (m != 0 && ((m < 0) != (bf < 0))) m += bf;
    return Value::real(m);
  }
  if (op == "**") {
    if (ints && bi >= 0) {
      if (ai == -1) return Value::integer(bi % 2 ? -1 : 1);  // the loop below would run bi times
      r = 1;
      for (int64_t k = 0; k < bi && r != 0 && !(r == 1 && ai == 1); ++k)
        if (__builtin_mul_overflow(r, ai, &r)) return overflow();
      return Value::integer(r);
    }
    if (nums) {
      double p = std::pow(af, bf);
      if (std::isinf(p) && std::isfinite(af) && std::isfinite(bf))
        throw TemplateError(
            detail::str("chat template line ", e.line, ": (34, 'Numerical result out of range')"));
      return Value::real(p);
    }
    return fail();
  }
  throw UnsupportedError(
      detail::str("chat template line ", e.line, ": operator '", op, "' is not supported"));
}

}  // namespace nibble::jinja
