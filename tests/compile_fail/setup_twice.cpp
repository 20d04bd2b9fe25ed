// Must NOT compile: passing what fabric.setup() returned back into setup() is a compile-time
// error whose first message is the documented one (tests/CMakeLists.txt checks the compiler's
// output for it). CASE selects the call.
#include <cppfabric/fabric.hpp>
#include <memory>

struct NetImpl;  // the user's module; its definition does not matter here

void user_code(cppfabric::Fabric& fabric, const cppfabric::FabricModule<NetImpl>& net,
               const std::shared_ptr<NetImpl>& model, const cppfabric::FabricOptimizer& opt) {
#if CASE == 1
  auto [a, b] = fabric.setup(net, opt);  // "A model should be passed only once ..."
#elif CASE == 2
  auto [a, b] = fabric.setup(model, opt);  // "An optimizer should be passed only once ..."
#elif CASE == 3
  auto a = fabric.setup_module(net);  // "... to the `setup_module` method."
#elif CASE == 4
  auto a = fabric.setup_optimizers(opt);  // "... to the `setup_optimizers` method."
#endif
}
