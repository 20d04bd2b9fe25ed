// `cppfabric run [OPTIONS] PROGRAM [ARGS]...`: see cli.hpp and docs/cli.md.
#include "cli.hpp"

int main(int argc, char** argv) { return cppfabric::cli::tool_main(argc, argv); }
