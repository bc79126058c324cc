// The nibble command line: thin over the library — parse flags (spelled as transformers'
// names), call the library, print. Errors (bad flags included) become one line on stderr and a
// non-zero exit; --help prints a command's usage.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <iostream>

#include "commands.h"
#include "nibble/error.h"
#include "nibble/thread_pool.h"

int main(int argc, char** argv) {
  using namespace nibble::cli;
  CLI::App app{"nibble: load, quantize (bitsandbytes NF4/FP4/int8) and run Hugging Face causal LMs"};
  app.require_subcommand(1);
  int threads = 0;
  app.add_option("--threads", threads, "CPU threads (default: all cores)");
  QuantizeArgs qargs;
  add_quantize_command(app, qargs);
  InspectArgs iargs;
  add_inspect_command(app, iargs);
  GenerateArgs gargs;
  add_generate_command(app, gargs);
  ChatArgs cargs;
  add_chat_command(app, cargs);
  RenderChatArgs rargs;
  add_render_chat_command(app, rargs);
  PerplexityArgs pargs;
  add_perplexity_command(app, pargs);
  TokenizeArgs targs;
  add_tokenize_command(app, targs);
  DetokenizeArgs dargs;
  add_detokenize_command(app, dargs);
  VerifyArgs vargs;
  add_verify_command(app, vargs);
  FinetuneArgs fargs;
  add_finetune_command(app, fargs);
  MergeArgs margs;
  add_merge_command(app, margs);
  ServeArgs sargs;
  add_serve_command(app, sargs);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    std::fprintf(stderr, "nibble: error: %s (see --help)\n", e.what());
    return 2;
  }
  try {
    if (threads > 0) nibble::set_num_threads(threads);
    if (app.got_subcommand("quantize")) return run_quantize(qargs);
    if (app.got_subcommand("inspect")) return run_inspect(iargs);
    if (app.got_subcommand("generate")) return run_generate(gargs);
    if (app.got_subcommand("chat")) return run_chat(cargs);
    if (app.got_subcommand("render-chat")) return run_render_chat(rargs);
    if (app.got_subcommand("perplexity")) return run_perplexity(pargs);
    if (app.got_subcommand("tokenize")) return run_tokenize(targs);
    if (app.got_subcommand("detokenize")) return run_detokenize(dargs);
    if (app.got_subcommand("serve")) return run_serve(sargs);
    if (app.got_subcommand("verify")) return run_verify(vargs);  // 0 all passed, 1 one failed
    if (app.got_subcommand("finetune")) return run_finetune(fargs);
    if (app.got_subcommand("merge")) return run_merge(margs);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "nibble: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
