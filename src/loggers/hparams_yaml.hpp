// hparams.yaml as PyTorch Lightning writes it (PyYAML's `yaml.dump`). Private.
#pragma once

#include <string>

#include "cppfabric/loggers/logger.hpp"

namespace cppfabric::loggers::detail {

/// PyYAML's `yaml.dump` of a flat mapping (sorted keys), as PyTorch Lightning writes hparams.yaml.
std::string hparams_to_yaml(const HParams& params);

}  // namespace cppfabric::loggers::detail
