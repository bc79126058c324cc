// Recursive-descent parser mirroring jinja2's parser.py method for method (parse_condexpr,
// parse_or, ..., parse_unary, parse_postfix, parse_filter_expr) so precedence and the
// odd corners (a filter binds tighter than unary minus, `for x in xs if c` takes no inline
// if-else, a test takes one bare argument) come out the same.
#include "tokenizer/jinja/parser.h"

#include <set>
#include <utility>

#include "nibble/error.h"

namespace nibble::jinja {

namespace {

class Parser {
 public:
  explicit Parser(const std::vector<Token>& toks) : t_(toks) {}

  Body parse_template() {
    Body body;
    std::string end = parse_body(body, {});
    if (!end.empty()) fail(detail::str("unexpected '", end, "'"));
    return body;
  }

 private:
  const std::vector<Token>& t_;
  size_t p_ = 0;
  int loop_depth_ = 0;  // for-loop bodies enclosing the current statement (break/continue)
  int nesting_ = 0;     // recursion depth, bounded so a hostile template cannot overflow the stack

  struct DepthGuard {
    Parser& p;
    explicit DepthGuard(Parser& parser) : p(parser) {
      if (++p.nesting_ > 400) p.fail("template nested too deeply");
    }
    ~DepthGuard() { --p.nesting_; }
  };

  const Token& cur() const { return t_[p_]; }
  const Token& peek(size_t k = 1) const { return t_[std::min(p_ + k, t_.size() - 1)]; }
  int line() const { return cur().line; }
  [[noreturn]] void fail(const std::string& msg) const {
    throw FormatError(detail::str("chat template line ", line(), ": ", msg));
  }
  [[noreturn]] void unsupported(const std::string& what) const {
    throw UnsupportedError(detail::str("chat template line ", line(), ": ", what, " is not supported"));
  }
  bool is_op(const char* op) const { return cur().type == Tok::Op && cur().text == op; }
  bool is_name(const char* n) const { return cur().type == Tok::Name && cur().text == n; }
  bool skip_op(const char* op) {
    if (!is_op(op)) return false;
    ++p_;
    return true;
  }
  bool skip_name(const char* n) {
    if (!is_name(n)) return false;
    ++p_;
    return true;
  }
  void expect_op(const char* op) {
    if (!skip_op(op)) fail(detail::str("expected '", op, "', got '", describe(), "'"));
  }
  std::string expect_name() {
    if (cur().type != Tok::Name) fail(detail::str("expected a name, got '", describe(), "'"));
    return t_[p_++].text;
  }
  void expect_block_end() {
    if (cur().type != Tok::BlockEnd) fail(detail::str("expected end of tag '%}', got '", describe(), "'"));
    ++p_;
  }
  std::string describe() const {
    switch (cur().type) {
      case Tok::Eof:
        return "end of template";
      case Tok::BlockEnd:
        return "%}";
      case Tok::VarEnd:
        return "}}";
      default:
        return cur().text;
    }
  }

  static ExprPtr make(ExprKind k, int line) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->line = line;
    return e;
  }
  static NodePtr make_node(NodeKind k, int line) {
    auto n = std::make_unique<Node>();
    n->kind = k;
    n->line = line;
    return n;
  }

  // Parses statements into `body` until a block tag named in `ends`; returns that name with
  // the parser positioned after it (the caller consumes the rest of that tag). "" at EOF.
  std::string parse_body(Body& body, const std::set<std::string>& ends) {
    DepthGuard guard(*this);
    while (true) {
      const Token& tk = cur();
      switch (tk.type) {
        case Tok::Eof:
          if (!ends.empty()) fail(detail::str("unexpected end of template, expected '", *ends.begin(), "'"));
          return "";
        case Tok::Text: {
          auto n = make_node(NodeKind::Text, tk.line);
          n->text = tk.text;
          body.push_back(std::move(n));
          ++p_;
          break;
        }
        case Tok::VarBegin: {
          ++p_;
          auto n = make_node(NodeKind::Output, tk.line);
          n->expr = parse_tuple(true);
          if (cur().type != Tok::VarEnd) fail(detail::str("expected '}}', got '", describe(), "'"));
          ++p_;
          body.push_back(std::move(n));
          break;
        }
        case Tok::BlockBegin: {
          ++p_;
          if (cur().type != Tok::Name) fail("expected a tag name after '{%'");
          std::string kw = cur().text;
          if (ends.count(kw)) {
            ++p_;
            return kw;
          }
          body.push_back(parse_statement());
          break;
        }
        default:
          fail(detail::str("unexpected token '", describe(), "'"));
      }
    }
  }

  NodePtr parse_statement() {
    int ln = line();
    std::string kw = expect_name();
    if (kw == "if") return parse_if(ln);
    if (kw == "for") return parse_for(ln);
    if (kw == "set") return parse_set(ln);
    if (kw == "macro") return parse_macro(ln);
    if (kw == "call") return parse_call_block(ln);
    if (kw == "filter") return parse_filter_block(ln);
    if (kw == "with") return parse_with(ln);
    if (kw == "generation") {
      expect_block_end();
      auto n = make_node(NodeKind::Scope, ln);
      parse_body(n->body, {"endgeneration"});
      expect_block_end();
      return n;
    }
    if (kw == "break" || kw == "continue") {
      // Python compiles jinja2's loop controls, so one outside a loop body is a syntax error.
      if (loop_depth_ == 0) fail(detail::str("'", kw, "' outside loop"));
      expect_block_end();
      return make_node(kw == "break" ? NodeKind::Break : NodeKind::Continue, ln);
    }
    static const std::set<std::string> known = {"extends",    "include", "import", "from",      "block",
                                                "autoescape", "do",      "trans",  "pluralize", "debug"};
    --p_;
    if (known.count(kw)) unsupported(detail::str("the '{% ", kw, " %}' tag"));
    fail(detail::str("unknown tag '", kw, "'"));
  }

  NodePtr parse_if(int ln) {
    auto n = make_node(NodeKind::If, ln);
    n->conds.push_back(parse_tuple(false));
    expect_block_end();
    while (true) {
      n->bodies.emplace_back();
      std::string end = parse_body(n->bodies.back(), {"elif", "else", "endif"});
      if (end == "elif") {
        n->conds.push_back(parse_tuple(false));
        expect_block_end();
      } else if (end == "else") {
        expect_block_end();
        n->bodies.emplace_back();
        parse_body(n->bodies.back(), {"endif"});
        expect_block_end();
        return n;
      } else {
        expect_block_end();
        return n;
      }
    }
  }

  // Assignment targets: `a`, `a, b`, `(a, b)`.
  void parse_targets(Node& n) {
    bool paren = skip_op("(");
    n.targets.push_back(expect_name());
    while (skip_op(",")) {
      n.tuple_target = true;
      if (cur().type != Tok::Name) break;
      n.targets.push_back(expect_name());
    }
    if (paren) {
      n.tuple_target = true;
      expect_op(")");
    }
  }

  NodePtr parse_for(int ln) {
    auto n = make_node(NodeKind::For, ln);
    parse_targets(*n);
    if (!skip_name("in")) fail("expected 'in' in for loop");
    n->expr = parse_tuple(false);
    if (skip_name("if")) n->cond = parse_tuple(true);
    if (is_name("recursive")) unsupported("a recursive for loop");
    expect_block_end();
    ++loop_depth_;
    std::string end = parse_body(n->body, {"endfor", "else"});
    --loop_depth_;
    if (end == "else") {
      expect_block_end();
      parse_body(n->else_body, {"endfor"});
    }
    expect_block_end();
    return n;
  }

  NodePtr parse_set(int ln) {
    auto n = make_node(NodeKind::Set, ln);
    if (cur().type == Tok::Name && peek().type == Tok::Op && peek().text == ".") {
      n->targets.push_back(expect_name());
      ++p_;
      n->attr = expect_name();
      expect_op("=");
      n->expr = parse_tuple(true);
      expect_block_end();
      return n;
    }
    parse_targets(*n);
    if (skip_op("=")) {
      n->expr = parse_tuple(true);
      expect_block_end();
      return n;
    }
    // Block set: {% set x %}...{% endset %}, optionally with filters {% set x | f %}.
    if (n->tuple_target) fail("block set takes a single name");
    if (is_op("|")) n->cond = parse_filter_chain(nullptr);
    expect_block_end();
    parse_body(n->body, {"endset"});
    expect_block_end();
    return n;
  }

  void parse_params(Node& n) {
    expect_op("(");
    while (!is_op(")")) {
      if (!n.params.empty()) expect_op(",");
      if (is_op(")")) break;
      std::string name = expect_name();
      ExprPtr def;
      if (skip_op("=")) def = parse_expression(true);
      n.params.emplace_back(std::move(name), std::move(def));
    }
    expect_op(")");
  }

  NodePtr parse_macro(int ln) {
    auto n = make_node(NodeKind::Macro, ln);
    n->name = expect_name();
    parse_params(*n);
    expect_block_end();
    int outer_loops = std::exchange(loop_depth_, 0);  // a macro body is its own function
    parse_body(n->body, {"endmacro"});
    loop_depth_ = outer_loops;
    if (cur().type == Tok::Name) ++p_;  // {% endmacro name %}
    expect_block_end();
    return n;
  }

  NodePtr parse_call_block(int ln) {
    auto n = make_node(NodeKind::CallBlock, ln);
    if (is_op("(")) parse_params(*n);
    n->expr = parse_expression(true);
    if (n->expr->kind != ExprKind::Call) fail("expected a call after '{% call'");
    expect_block_end();
    int outer_loops = std::exchange(loop_depth_, 0);  // the body becomes the `caller` macro
    parse_body(n->body, {"endcall"});
    loop_depth_ = outer_loops;
    expect_block_end();
    return n;
  }

  NodePtr parse_filter_block(int ln) {
    auto n = make_node(NodeKind::FilterBlock, ln);
    n->expr = parse_filter_chain(nullptr, /*leading_pipe=*/false);
    expect_block_end();
    parse_body(n->body, {"endfilter"});
    expect_block_end();
    return n;
  }

  NodePtr parse_with(int ln) {
    auto n = make_node(NodeKind::With, ln);
    while (cur().type != Tok::BlockEnd) {
      if (!n->targets.empty()) expect_op(",");
      n->targets.push_back(expect_name());
      expect_op("=");
      n->values.push_back(parse_expression(true));
    }
    expect_block_end();
    parse_body(n->body, {"endwith"});
    expect_block_end();
    return n;
  }

  // --- expressions -------------------------------------------------------------------

  // A comma list without brackets becomes a tuple: {{ a, b }}, {% set x = 1, 2 %}.
  ExprPtr parse_tuple(bool with_condexpr) {
    int ln = line();
    ExprPtr first = parse_expression(with_condexpr);
    if (!is_op(",")) return first;
    auto t = make(ExprKind::ListLit, ln);
    t->tuple = true;
    t->children.push_back(std::move(first));
    while (skip_op(",")) {
      if (cur().type == Tok::BlockEnd || cur().type == Tok::VarEnd || is_op(")")) break;
      t->children.push_back(parse_expression(with_condexpr));
    }
    return t;
  }

  ExprPtr parse_expression(bool with_condexpr) { return with_condexpr ? parse_condexpr() : parse_or(); }

  ExprPtr parse_condexpr() {
    int ln = line();
    ExprPtr e = parse_or();
    while (skip_name("if")) {
      auto c = make(ExprKind::CondExpr, ln);
      ExprPtr test = parse_or();
      ExprPtr other = skip_name("else") ? parse_condexpr() : nullptr;
      c->children.push_back(std::move(e));
      c->children.push_back(std::move(test));
      c->children.push_back(std::move(other));
      e = std::move(c);
    }
    return e;
  }

  ExprPtr binary(const std::string& op, ExprPtr a, ExprPtr b, int ln) {
    auto e = make(ExprKind::Binary, ln);
    e->name = op;
    e->children.push_back(std::move(a));
    e->children.push_back(std::move(b));
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (is_name("or")) {
      int ln = line();
      ++p_;
      e = binary("or", std::move(e), parse_and(), ln);
    }
    return e;
  }

  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (is_name("and")) {
      int ln = line();
      ++p_;
      e = binary("and", std::move(e), parse_not(), ln);
    }
    return e;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      auto e = make(ExprKind::Unary, line());
      ++p_;
      e->name = "not";
      e->children.push_back(parse_not());
      return e;
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    int ln = line();
    ExprPtr e = parse_math1();
    // a < b < c means (a < b) and (b < c), b evaluated once, as in Python.
    ExprPtr chain;
    while (true) {
      std::string op;
      if (cur().type == Tok::Op && (cur().text == "==" || cur().text == "!=" || cur().text == "<" ||
                                    cur().text == ">" || cur().text == "<=" || cur().text == ">=")) {
        op = cur().text;
        ++p_;
      } else if (is_name("in")) {
        op = "in";
        ++p_;
      } else if (is_name("not") && peek().type == Tok::Name && peek().text == "in") {
        op = "not in";
        p_ += 2;
      } else {
        break;
      }
      if (!chain) {
        chain = make(ExprKind::Compare, ln);
        chain->children.push_back(std::move(e));
      }
      chain->ops.push_back(op);
      chain->children.push_back(parse_math1());
    }
    return chain ? std::move(chain) : std::move(e);
  }

  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
      int ln = line();
      std::string op = t_[p_++].text;
      e = binary(op, std::move(e), parse_concat(), ln);
    }
    return e;
  }

  ExprPtr parse_concat() {
    ExprPtr e = parse_math2();
    while (is_op("~")) {
      int ln = line();
      ++p_;
      e = binary("~", std::move(e), parse_math2(), ln);
    }
    return e;
  }

  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      int ln = line();
      std::string op = t_[p_++].text;
      e = binary(op, std::move(e), parse_pow(), ln);
    }
    return e;
  }

  ExprPtr parse_pow() {
    ExprPtr e = parse_unary(true);
    while (is_op("**")) {
      int ln = line();
      ++p_;
      e = binary("**", std::move(e), parse_unary(true), ln);
    }
    return e;
  }

  ExprPtr parse_unary(bool with_filter) {
    DepthGuard guard(*this);
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      e = make(ExprKind::Unary, line());
      e->name = t_[p_++].text;
      e->children.push_back(parse_unary(false));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprPtr parse_primary() {
    int ln = line();
    const Token& tk = cur();
    if (tk.type == Tok::Name) {
      ++p_;
      auto e = make(ExprKind::Literal, ln);
      if (tk.text == "true" || tk.text == "True")
        e->value = Value::boolean(true);
      else if (tk.text == "false" || tk.text == "False")
        e->value = Value::boolean(false);
      else if (tk.text == "none" || tk.text == "None")
        e->value = Value::none();
      else {
        e->kind = ExprKind::Name;
        e->name = tk.text;
      }
      return e;
    }
    if (tk.type == Tok::String) {
      std::string s;
      while (cur().type == Tok::String) s += t_[p_++].text;  // adjacent literals concatenate
      auto e = make(ExprKind::Literal, ln);
      e->value = Value::string(std::move(s));
      return e;
    }
    if (tk.type == Tok::Int || tk.type == Tok::Float) {
      ++p_;
      auto e = make(ExprKind::Literal, ln);
      try {
        e->value =
            tk.type == Tok::Int ? Value::integer(std::stoll(tk.text)) : Value::real(std::stod(tk.text));
      } catch (const std::exception&) {
        fail(detail::str("number out of range: ", tk.text));
      }
      return e;
    }
    if (skip_op("(")) {
      if (skip_op(")")) {
        auto e = make(ExprKind::ListLit, ln);
        e->tuple = true;
        return e;
      }
      ExprPtr e = parse_tuple(true);
      if (e->kind == ExprKind::ListLit && e->tuple && is_op(")")) {
        ++p_;
        return e;
      }
      if (is_op(",")) {  // (a,) single-element tuple
        auto t = make(ExprKind::ListLit, ln);
        t->tuple = true;
        t->children.push_back(std::move(e));
        ++p_;
        expect_op(")");
        return t;
      }
      expect_op(")");
      return e;
    }
    if (skip_op("[")) {
      auto e = make(ExprKind::ListLit, ln);
      while (!is_op("]")) {
        if (!e->children.empty()) expect_op(",");
        if (is_op("]")) break;
        e->children.push_back(parse_expression(true));
      }
      expect_op("]");
      return e;
    }
    if (skip_op("{")) {
      auto e = make(ExprKind::DictLit, ln);
      while (!is_op("}")) {
        if (!e->children.empty()) expect_op(",");
        if (is_op("}")) break;
        e->children.push_back(parse_expression(true));
        expect_op(":");
        e->children.push_back(parse_expression(true));
      }
      expect_op("}");
      return e;
    }
    fail(detail::str("unexpected '", describe(), "'"));
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      int ln = line();
      if (skip_op(".")) {
        if (cur().type == Tok::Int) {
          auto g = make(ExprKind::GetItem, ln);
          auto k = make(ExprKind::Literal, ln);
          const std::string& digits = t_[p_++].text;
          try {
            k->value = Value::integer(std::stoll(digits));
          } catch (const std::exception&) {  // x.9223372036854775808: past int64
            fail(detail::str("number out of range: ", digits));
          }
          g->children.push_back(std::move(e));
          g->children.push_back(std::move(k));
          e = std::move(g);
        } else {
          auto g = make(ExprKind::GetAttr, ln);
          g->name = expect_name();
          g->children.push_back(std::move(e));
          e = std::move(g);
        }
      } else if (skip_op("[")) {
        e = parse_subscript(std::move(e), ln);
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr obj, int ln) {
    ExprPtr parts[3];
    bool slice = false;
    for (int k = 0; k < 3; ++k) {
      if (!is_op(":") && !is_op("]")) parts[k] = parse_expression(true);
      if (k < 2 && skip_op(":")) {
        slice = true;
        continue;
      }
      break;
    }
    expect_op("]");
    if (!slice) {
      if (!parts[0]) fail("empty subscript");
      auto g = make(ExprKind::GetItem, ln);
      g->children.push_back(std::move(obj));
      g->children.push_back(std::move(parts[0]));
      return g;
    }
    auto s = make(ExprKind::Slice, ln);
    s->children.push_back(std::move(obj));
    for (auto& p : parts) s->children.push_back(std::move(p));
    return s;
  }

  void parse_args(Expr& call) {
    expect_op("(");
    bool first = true;
    while (!is_op(")")) {
      if (!first) expect_op(",");
      first = false;
      if (is_op(")")) break;
      if (is_op("*") || is_op("**")) unsupported("*args / **kwargs in a call");
      if (cur().type == Tok::Name && peek().type == Tok::Op && peek().text == "=") {
        std::string key = t_[p_].text;
        p_ += 2;
        call.kwargs.emplace_back(key, parse_expression(true));
      } else {
        if (!call.kwargs.empty()) fail("positional argument after keyword argument");
        call.children.push_back(parse_expression(true));
      }
    }
    expect_op(")");
  }

  ExprPtr parse_call(ExprPtr callee) {
    auto c = make(ExprKind::Call, line());
    c->children.push_back(std::move(callee));
    parse_args(*c);
    return c;
  }

  // Filters applied to `e` (null for a filter block), test expressions, and calls on results.
  ExprPtr parse_filter_chain(ExprPtr e, bool leading_pipe = true) {
    bool first = true;
    while (first ? (!leading_pipe || is_op("|")) : is_op("|")) {
      if (!(first && !leading_pipe)) ++p_;
      first = false;
      auto f = make(ExprKind::Filter, line());
      f->name = expect_name();
      while (skip_op(".")) f->name += "." + expect_name();
      f->children.push_back(std::move(e));
      if (is_op("(")) parse_args(*f);
      e = std::move(f);
    }
    return e;
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    while (true) {
      if (is_op("|")) {
        e = parse_filter_chain(std::move(e));
      } else if (is_name("is")) {
        ++p_;
        auto t = make(ExprKind::Test, line());
        t->negated = skip_name("not");
        t->name = expect_name();
        while (skip_op(".")) t->name += "." + expect_name();
        t->children.push_back(std::move(e));
        if (is_op("(")) {
          parse_args(*t);
        } else if ((cur().type == Tok::Name || cur().type == Tok::String || cur().type == Tok::Int ||
                    cur().type == Tok::Float || is_op("(") || is_op("[") || is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and")) {
          if (is_name("is")) fail("you cannot chain multiple tests with 'is'");
          t->children.push_back(parse_postfix(parse_primary()));
        }
        e = std::move(t);
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }
};

}  // namespace

Body parse(const std::vector<Token>& tokens) {
  return Parser(tokens).parse_template();
}

}  // namespace nibble::jinja
