// The umbrella header: everything cppfabric offers.
//
//   #include <cppfabric/cppfabric.hpp>
//   using cppfabric::Fabric;
#pragma once

#include "cppfabric/accelerators/accelerator.hpp"
#include "cppfabric/accelerators/cpu.hpp"
#include "cppfabric/accelerators/cuda.hpp"
#include "cppfabric/callbacks.hpp"
#include "cppfabric/checkpoint/checkpoint_io.hpp"
#include "cppfabric/collectives/process_group.hpp"
#include "cppfabric/environments/cluster_environment.hpp"
#include "cppfabric/fabric.hpp"
#include "cppfabric/guard.hpp"
#include "cppfabric/loggers/logger.hpp"
#include "cppfabric/options.hpp"
#include "cppfabric/plugins.hpp"
#include "cppfabric/precision/autocast.hpp"
#include "cppfabric/precision/double.hpp"
#include "cppfabric/precision/grad_scaler.hpp"
#include "cppfabric/precision/half.hpp"
#include "cppfabric/precision/mixed.hpp"
#include "cppfabric/precision/precision.hpp"
#include "cppfabric/strategies/single_device.hpp"
#include "cppfabric/strategies/strategy.hpp"
#include "cppfabric/utilities/errors.hpp"
#include "cppfabric/utilities/rank_zero.hpp"
#include "cppfabric/utilities/seed.hpp"
#include "cppfabric/wrappers.hpp"
