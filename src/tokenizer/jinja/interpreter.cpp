// Tree-walking evaluator. Scoping follows jinja2: `if` shares its scope, each for-loop
// iteration and each macro call gets a fresh one (a `set` inside a loop is gone at the next
// iteration — hence namespace()), and `loop` describes the innermost loop. Operators follow
// Python (int/int `/` gives float, `//` and `%` floor, `~` joins str() of both sides).
#include "tokenizer/jinja/interpreter.h"

#include <algorithm>
#include <cmath>
#include <optional>

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
  std::string out;
  exec(body, globals, out);
  return out;
}

Interpreter::Flow Interpreter::exec(const Body& body, Scope& s, std::string& out) {
  for (const auto& n : body) {
    Flow f = exec_node(*n, s, out);
    if (f != Flow::Normal) return f;
  }
  return Flow::Normal;
}

Interpreter::Flow Interpreter::exec_node(const Node& n, Scope& s, std::string& out) {
  switch (n.kind) {
    case NodeKind::Text: out += n.text; return Flow::Normal;
    case NodeKind::Output: out += to_str(eval(*n.expr, s)); return Flow::Normal;
    case NodeKind::If:
      for (size_t k = 0; k < n.conds.size(); ++k)
        if (truthy(eval(*n.conds[k], s))) return exec(n.bodies[k], s, out);
      if (n.bodies.size() > n.conds.size()) return exec(n.bodies.back(), s, out);
      return Flow::Normal;
    case NodeKind::For: return exec_for(n, s, out);
    case NodeKind::Set: exec_set(n, s); return Flow::Normal;
    case NodeKind::Macro: s.vars[n.name] = make_macro(n, s); return Flow::Normal;
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
    case NodeKind::Break: return Flow::Break;
    case NodeKind::Continue: return Flow::Continue;
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
    case NodeKind::Scope: return exec(n.body, s, out);
  }
  return Flow::Normal;
}

static void assign(Scope& s, const Node& n, const Value& v) {
  if (!n.tuple_target) {
    s.vars[n.targets[0]] = v;
    return;
  }
  List items = iterate(v);
  if (items.size() != n.targets.size())
    throw TemplateError(detail::str("cannot unpack ", items.size(), " values into ", n.targets.size(), " names"));
  for (size_t k = 0; k < items.size(); ++k) s.vars[n.targets[k]] = items[k];
}

Interpreter::Flow Interpreter::exec_for(const Node& n, Scope& s, std::string& out) {
  Value seq = eval(*n.expr, s);
  if (seq.is_none() || seq.kind == Kind::Int || seq.kind == Kind::Float || seq.kind == Kind::Bool)
    throw TemplateError(detail::str("chat template line ", n.line, ": '", type_name(seq), "' object is not iterable"));
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
  for (int64_t k = 0; k < len; ++k) {
    Scope local{{}, &s};
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
    assign(local, n, items[k]);
    Flow f = exec(n.body, local, out);
    if (f == Flow::Break) break;
  }
  if (len == 0 && !n.else_body.empty()) {
    Scope local{{}, &s};
    exec(n.else_body, local, out);
  }
  return Flow::Normal;
}

void Interpreter::exec_set(const Node& n, Scope& s) {
  if (!n.attr.empty()) {
    const Value* ns = s.lookup(n.targets[0]);
    if (!ns || !ns->is_namespace)
      throw TemplateError(detail::str("chat template line ", n.line, ": cannot assign attribute on non-namespace object '",
                                      n.targets[0], "'"));
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

Value Interpreter::make_macro(const Node& n, Scope& s) {
  const Node* node = &n;
  Scope* defining = &s;
  return Value::function([this, node, defining](CallArgs& a) -> Value {
    if (++depth_ > 200) {
      depth_ = 0;
      throw TemplateError("macro recursion too deep");
    }
    Scope local{{}, defining};
    size_t np = node->params.size();
    List varargs;
    for (size_t k = 0; k < a.args.size(); ++k) {
      if (k < np) local.vars[node->params[k].first] = a.args[k];
      else varargs.push_back(a.args[k]);
    }
    Dict extra;
    for (auto& [key, v] : a.kwargs) {
      bool is_param = false;
      for (const auto& p : node->params) is_param = is_param || p.first == key;
      if (is_param) local.vars[key] = v;
      else if (key == "caller") local.vars["caller"] = v;
      else extra.emplace_back(key, v);
    }
    for (const auto& [pname, def] : node->params)
      if (!local.vars.count(pname))
        local.vars[pname] = def ? eval(*def, local) : Value::undefined("'" + pname + "' is undefined");
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
      throw TemplateError(detail::str("chat template line ", line, ": ", fn.s.empty() ? "value is undefined" : fn.s));
    throw TemplateError(detail::str("chat template line ", line, ": '", type_name(fn), "' object is not callable"));
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
    throw UnsupportedError(detail::str("chat template line ", line, ": filter '", name, "' is not supported"));
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
  } else if (obj.is_list()) {
    src = *obj.list;
  } else {
    throw TemplateError(detail::str("chat template line ", line, ": '", type_name(obj), "' object is not subscriptable"));
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
    if (obj.is_string()) s += chars[k];
    else out.push_back(src[k]);
  }
  if (obj.is_string()) return Value::string(s);
  return Value::make_list(std::move(out), obj.is_tuple);
}

Value Interpreter::eval(const Expr& e, Scope& s) {
  switch (e.kind) {
    case ExprKind::Literal: return e.value;
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
      throw TemplateError(detail::str("chat template line ", e.line, ": bad operand type for unary ", e.name, ": '",
                                      type_name(v), "'"));
    }
    case ExprKind::Binary: return binary(e, s);
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
    throw TemplateError(detail::str("chat template line ", e.line, ": unsupported operand type(s) for ", op, ": '",
                                    type_name(a), "' and '", type_name(b), "'"));
  };
  try {
    if (op == "~") return Value::string(to_str(a) + to_str(b));
    if (op == "==") return Value::boolean(equals(a, b));
    if (op == "!=") return Value::boolean(!equals(a, b));
    if (op == "<") return Value::boolean(less(a, b));
    if (op == ">") return Value::boolean(less(b, a));
    if (op == "<=") return Value::boolean(!less(b, a));
    if (op == ">=") return Value::boolean(!less(a, b));
    if (op == "in") return Value::boolean(contains(b, a));
    if (op == "not in") return Value::boolean(!contains(b, a));
  } catch (const TemplateError& err) {
    if (a.is_undefined() || b.is_undefined()) fail();
    rethrow_with_line(err, e.line);
  }
  bool ints = (a.kind == Kind::Int || a.kind == Kind::Bool) && (b.kind == Kind::Int || b.kind == Kind::Bool);
  int64_t ai = a.kind == Kind::Bool ? a.b : a.i, bi = b.kind == Kind::Bool ? b.b : b.i;
  bool nums = a.is_number() && b.is_number();
  double af = nums ? as_double(a, op.c_str()) : 0, bf = nums ? as_double(b, op.c_str()) : 0;
  if (op == "+") {
    if (ints) return Value::integer(ai + bi);
    if (nums) return Value::real(af + bf);
    if (a.is_string() && b.is_string()) {
      if (!a.is_markup && !b.is_markup) return Value::string(a.s + b.s);
      // Markup + str escapes the str (markupsafe), even with autoescape off.
      Value r = Value::string(html_escape(a).s + html_escape(b).s);
      r.is_markup = true;
      return r;
    }
    if (a.is_list() && b.is_list()) {
      List items = *a.list;
      items.insert(items.end(), b.list->begin(), b.list->end());
      return Value::make_list(std::move(items), a.is_tuple);
    }
    return fail();
  }
  if (op == "-") {
    if (ints) return Value::integer(ai - bi);
    if (nums) return Value::real(af - bf);
    return fail();
  }
  if (op == "*") {
    if (ints) return Value::integer(ai * bi);
    if (nums) return Value::real(af * bf);
    const Value* seq = a.is_string() || a.is_list() ? &a : &b;
    const Value* cnt = seq == &a ? &b : &a;
    if ((seq->is_string() || seq->is_list()) && (cnt->kind == Kind::Int || cnt->kind == Kind::Bool)) {
      int64_t times = cnt->kind == Kind::Bool ? cnt->b : cnt->i;
      if (seq->is_string()) {
        std::string r;
        for (int64_t k = 0; k < times; ++k) r += seq->s;
        return Value::string(r);
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
    if (bf == 0) throw TemplateError(detail::str("chat template line ", e.line, ": integer division or modulo by zero"));
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
          Value r = Value::string(percent_format(a.s, args));
          r.is_markup = true;
          return r;
        }
        return Value::string(percent_format(a.s, b));
      } catch (const TemplateError& err) {
        rethrow_with_line(err, e.line);
      } catch (const UnsupportedError& err) {
        rethrow_unsupported_with_line(err, e.line);
      }
    }
    if (!nums) return fail();
    if (bf == 0) throw TemplateError(detail::str("chat template line ", e.line, ": integer division or modulo by zero"));
    if (ints) return Value::integer(ai - floor_div(ai, bi) * bi);
    double m = std::fmod(af, bf);
    if (m != 0 && ((m < 0) != (bf < 0))) m += bf;
    return Value::real(m);
  }
  if (op == "**") {
    if (ints && bi >= 0) {
      int64_t r = 1;
      for (int64_t k = 0; k < bi; ++k) r *= ai;
      return Value::integer(r);
    }
    if (nums) return Value::real(std::pow(af, bf));
    return fail();
  }
  throw UnsupportedError(detail::str("chat template line ", e.line, ": operator '", op, "' is not supported"));
}

}  // namespace nibble::jinja
