// The nibble command line: thin over the library — parse flags (spelled as transformers'
// names), call the library, print. Errors become one line on stderr and a non-zero exit.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <iostream>

#include "commands.h"
#include "nibble/error.h"
#include "nibble/thread_pool.h"

int main(int argc, char** argv) {
  CLI::App app{"nibble: load, quantize (bitsandbytes NF4/FP4/int8) and run Hugging Face causal LMs"};
  app.require_subcommand(1);
  int threads = 0;
  app.add_option("--threads", threads, "CPU threads (default: all cores)");
  nibble::cli::QuantizeArgs qargs;
  nibble::cli::add_quantize_command(app, qargs);
  nibble::cli::InspectArgs iargs;
  nibble::cli::add_inspect_command(app, iargs);
  nibble::cli::VerifyArgs vargs;
  nibble::cli::add_verify_command(app, vargs);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;  // --help is 0; a usage error is an error (2)
  }
  try {
    if (threads > 0) nibble::set_num_threads(threads);
    if (app.got_subcommand("quantize")) return nibble::cli::run_quantize(qargs);
    if (app.got_subcommand("inspect")) return nibble::cli::run_inspect(iargs);
    if (app.got_subcommand("verify")) return nibble::cli::run_verify(vargs);
  } catch (const nibble::Error& e) {
    std::fprintf(stderr, "nibble: error: %s\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "nibble: error: %s\n", e.what());
    return 2;
  }
  return 0;
}
