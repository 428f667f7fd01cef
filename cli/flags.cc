#include "cli/flags.h"

#include <iostream>

#include "common/log.h"

namespace pdserve::cli {

int ParseFlags(int argc, char** argv, const std::string& usage, const po::options_description& desc,
               po::variables_map* vm) {
  try {
    // argv[0] is the subcommand name; the parser skips it like a program name.
    po::store(po::command_line_parser(argc, argv).options(desc).run(), *vm);
    if (vm->count("help")) {
      std::cout << "usage: pdserve " << argv[0] << " " << usage << "\n\n" << desc << "\n";
      return 0;
    }
    po::notify(*vm);
  } catch (const po::error& e) {
    std::cerr << "pdserve " << argv[0] << ": error: " << e.what() << "\n"
              << "run 'pdserve " << argv[0] << " --help' for the flags\n";
    return 2;
  }
  if (!ApplyCommonFlags(*vm)) return 2;
  return -1;
}

void AddCommonFlags(po::options_description* desc) {
  desc->add_options()("help,h", "print this help")("log-level",
                                                   po::value<std::string>()->default_value("info"),
                                                   "debug, info, warning or error");
}

bool ApplyCommonFlags(const po::variables_map& vm) {
  if (!vm.count("log-level")) return true;
  LogLevel level;
  const std::string& text = vm["log-level"].as<std::string>();
  if (!ParseLogLevel(text.c_str(), &level)) {
    std::cerr << "error: --log-level must be debug, info, warning or error, not '" << text << "'\n";
    return false;
  }
  SetMinLogLevel(level);
  return true;
}

int Fail(const std::string& command, const std::string& message) {
  std::cerr << "pdserve " << command << ": error: " << message << "\n";
  return 1;
}

std::string DefaultModelPath() {
  return PDSERVE_SOURCE_DIR "/models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

}  // namespace pdserve::cli
