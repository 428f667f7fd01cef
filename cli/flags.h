// Per-subcommand flags on Boost.program_options: `--name value` and
// `--name=value`, typed values, generated --help, unknown flags rejected.
#pragma once

#include <string>

#include <boost/program_options.hpp>

namespace pdserve::cli {

namespace po = boost::program_options;

// Parses argv (argv[0] is the subcommand) into `vm`. Returns -1 to go on, or
// an exit code: 0 after printing --help, 2 after printing a usage error.
int ParseFlags(int argc, char** argv, const std::string& usage, const po::options_description& desc,
               po::variables_map* vm);

// Adds --log-level to `desc` and applies it after parsing (see ApplyCommonFlags).
void AddCommonFlags(po::options_description* desc);
// Returns false (after printing why) when a common flag has a bad value.
bool ApplyCommonFlags(const po::variables_map& vm);

// Prints "pdserve <cmd>: error: <message>" to stderr; returns 1.
int Fail(const std::string& command, const std::string& message);

// The bundled model's default location, relative to the source tree.
std::string DefaultModelPath();

}  // namespace pdserve::cli
