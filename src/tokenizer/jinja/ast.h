// Syntax tree of a parsed template: expressions (Expr) and statements (Node). One struct per
// family with a kind tag keeps the evaluator a pair of switches; every node keeps its
// template line so runtime errors can name it.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/jinja/value.h"

namespace nibble::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

enum class ExprKind {
  Literal,   // value
  Name,      // name
  GetAttr,   // a.name
  GetItem,   // a[b]
  Slice,     // a[b:c:d] (children a, start, stop, step; null child = omitted)
  Call,      // a(args..., name=kwargs...)
  Filter,    // a | name(args)  (a null for a filter block's body)
  Test,      // a is [not] name(args)
  Unary,     // op a: "not", "-", "+"
  Binary,    // a op b: and or + - * / // % ** ~ in "not in" == != < <= > >=
  Compare,   // a op1 b op2 c ...: chained comparison, ops in `ops`, operands in children
  CondExpr,  // a if b else c (c may be null)
  ListLit,   // [a, b] or tuple (a, b)
  DictLit,   // {k: v, ...}: children k0, v0, k1, v1, ...
};

struct Expr {
  ExprKind kind;
  int line = 0;
  std::string name;      // Name / GetAttr / Filter / Test / Unary / Binary operator
  bool negated = false;  // Test: `is not`
  bool tuple = false;    // ListLit written as a tuple
  Value value;           // Literal
  std::vector<ExprPtr> children;
  std::vector<std::string> ops;                         // Compare
  std::vector<std::pair<std::string, ExprPtr>> kwargs;  // Call / Filter / Test keyword arguments
};

struct Node;
using NodePtr = std::unique_ptr<Node>;
using Body = std::vector<NodePtr>;

enum class NodeKind {
  Text,       // text
  Output,     // {{ expr }}
  If,         // conds[i] -> bodies[i]; bodies.back() is else when bodies.size() > conds.size()
  For,        // targets in expr [if cond] body [else else_body]
  Set,        // targets = expr; or target.attr = expr (attr non-empty); or block set (body)
  Macro,      // name(params) body
  CallBlock,  // {% call(params) expr %} body
  Break,
  Continue,
  FilterBlock,  // {% filter f %} body: expr is the filter chain with a null innermost operand
  With,         // {% with a = x %} body
  Scope,        // transformers' {% generation %} body: renders its body unchanged
};

struct Node {
  NodeKind kind;
  int line = 0;
  std::string text;                  // Text
  ExprPtr expr;                      // Output, For iterable, Set value, CallBlock call, FilterBlock chain
  ExprPtr cond;                      // For's inline `if`
  std::vector<ExprPtr> conds;        // If
  std::vector<Body> bodies;          // If branches
  Body body, else_body;              // For / Macro / CallBlock / Set block / FilterBlock / With
  std::vector<std::string> targets;  // For / Set names; With names
  bool tuple_target = false;         // For/Set: `a, b` unpacking
  std::string attr;                  // Set: namespace attribute
  std::string name;                  // Macro name
  std::vector<std::pair<std::string, ExprPtr>> params;  // Macro / CallBlock parameters (default may be null)
  std::vector<ExprPtr> values;                          // With values
};

}  // namespace nibble::jinja
