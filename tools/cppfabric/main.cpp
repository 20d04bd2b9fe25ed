// `cppfabric run [OPTIONS] PROGRAM [ARGS]...`: see src/detail/cli_run.hpp and docs/cli.md.
#include "detail/cli_run.hpp"

int main(int argc, char** argv) { return cppfabric::detail::cli_main(argc, argv); }
