// Fabric's CIFAR-10 example, ported line for line (docs/examples/cifar10.md shows the Python beside
// it): a small CNN (dropout after fc1), AdamW, a cosine schedule with T_max=20 over 20 epochs,
// flip + crop + normalize, 4 loader workers, "16-mixed" precision on all devices ("auto"), a
// progress line with the running accuracy every 100 batches, validation accuracy per epoch,
// metrics to CSV and TensorBoard, a checkpoint per epoch and `--resume` from one.
//
//   cifar10 [--data-dir data] [--no-download] [--epochs 20] [--batch-size 128]
//           [--precision 16-mixed] [--accelerator auto] [--devices auto] [--strategy auto]
//           [--workers 4]
//           [--synthetic] [--synthetic-size 50000] [--max-steps N] [--seed 42] [--log-dir logs]
//           [--checkpoint-dir checkpoints] [--resume checkpoints/epoch_3.ckpt]
//           [--require-accuracy A] [--profile] [--device-data]
//           [--matmul-precision highest|high|medium] [--channels-last] [--cuda-graph]
//
// Without the CIFAR-10 files and without network it says so in one line and trains on
// SyntheticCIFAR10. Exits non-zero when --require-accuracy is given and the last validation
// accuracy is below it. On CPU, "16-mixed" becomes "bf16-mixed" (as in Python, with a warning).
// --profile prints, per epoch, where the time went: waiting for data, forward and backward, the
// optimizer step (one phase with --cuda-graph), validation, checkpoint, the rest (on a GPU every
// mark synchronises the device).
// --device-data (not in the seed; the GPU fast path): the images stay in device memory as uint8
// and are flipped, cropped and normalized per batch there (data::DeviceImages).
// --matmul-precision: torch.set_float32_matmul_precision's setting, here
// at::globalContext().setFloat32MatmulPrecision; "highest" (the default, as the seed leaves torch's)
// keeps float32 matmuls in float32, "high"/"medium" let GPUs with tensor cores use TF32 / bfloat16
// for them (docs/precision.md). With the "highest" default on such a GPU Fabric prints Lightning's
// hint about it once.
// --channels-last (not in the seed): the model's 4-D weights and every input batch in channels_last
// (NHWC) memory format; the same numbers up to float rounding (tests/example_cifar10.cmake checks
// the losses on CPU), possibly faster convolutions on tensor-core GPUs.
// --cuda-graph (not in the seed): the training step (forward, backward, AdamW step) is recorded
// once in a CUDA graph and replayed per batch (cppfabric::CapturedStep, with
// cppfabric::optim::AdamW's fused kernel); the ragged last batch runs eagerly. On other devices
// every step runs eagerly. Needs one device ("single_device").
#include <torch/torch.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cppfabric/cppfabric.hpp>
#include <cppfabric/optim/fused.hpp>
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "simple_cnn.hpp"

using cppfabric::Fabric;

// --profile: seconds per phase of an epoch, measured between marks.
struct EpochProfile {
  bool enabled = false, cuda = false;
  std::chrono::steady_clock::time_point last;
  std::vector<std::pair<std::string, double>> seconds;
  // A recorded step (--cuda-graph) is one phase; otherwise the optimizer's step is one of its own.
  void begin(bool recorded_step) {
    seconds = {{"data wait", 0}};
    if (recorded_step) {
      seconds.emplace_back("forward+backward+optimizer", 0);
    } else {
      seconds.insert(seconds.end(), {{"forward+backward", 0}, {"optimizer", 0}});
    }
    seconds.insert(seconds.end(), {{"validation", 0}, {"checkpoint", 0}, {"other", 0}});
    last = std::chrono::steady_clock::now();
  }
  void mark(const std::string& phase) {  // the time since the last mark goes to `phase`
    if (!enabled) return;
    if (cuda) torch::cuda::synchronize();
    const auto now = std::chrono::steady_clock::now();
    for (auto& entry : seconds) {
      if (entry.first == phase) entry.second += std::chrono::duration<double>(now - last).count();
    }
    last = now;
  }
  std::string summary() const {
    double total = 0;
    for (const auto& entry : seconds) total += entry.second;
    std::string out = fmt::format("{:.2f} s:", total);
    for (const auto& [phase, t] : seconds) {
      out += fmt::format(" {} {:.2f} s ({:.0f}%)", phase, t, 100 * t / std::max(total, 1e-9));
    }
    return out;
  }
};
namespace data = cppfabric::data;
namespace T = cppfabric::data::transforms;

// --channels-last: Python's `model.to(memory_format=torch.channels_last)` (4-D parameters and
// buffers in NHWC strides; the tensors stay the same objects, so an optimizer built later or earlier
// sees them).
void to_channels_last(torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters()) {
    if (p.dim() == 4) p.set_data(p.data().contiguous(torch::MemoryFormat::ChannelsLast));
  }
  for (auto& b : module.buffers()) {
    if (b.dim() == 4) b.set_data(b.data().contiguous(torch::MemoryFormat::ChannelsLast));
  }
}

int main(int argc, char** argv) {
  std::string data_dir = "data", precision = "16-mixed", accelerator = "auto", devices = "auto",
              strategy = "auto";
  std::string log_dir = "logs";
  std::string checkpoint_dir = "checkpoints", resume;
  std::string matmul_precision = "highest";
  bool download = true, synthetic = false, device_data = false, channels_last = false,
       cuda_graph = false;
  int epochs = 20, workers = 4;
  std::size_t batch_size = 128, synthetic_size = 50000;
  int64_t max_steps = -1, seed = 42;
  double require_accuracy = -1.0;
  EpochProfile profile;
  CLI::App app{"CIFAR-10 with cppfabric (Lightning Fabric's example, ported)"};
  app.add_option("--data-dir", data_dir, "Folder holding (or receiving) cifar-10-batches-bin");
  app.add_flag("--download,!--no-download", download, "Download CIFAR-10 when it is missing");
  app.add_option("--epochs", epochs, "Epochs")->check(CLI::PositiveNumber);
  app.add_option("--batch-size", batch_size, "Training batch size (validation uses 2x)")
      ->check(CLI::PositiveNumber);
  app.add_option("--precision", precision, "Fabric precision: 16-mixed, bf16-mixed, 32-true, ...");
  app.add_option("--accelerator", accelerator, "cpu, cuda or auto");
  app.add_option("--devices", devices, "Devices, as Fabric takes them");
  app.add_option("--strategy", strategy,
                 "Fabric strategy: auto, ddp, fsdp, deepspeed_stage_2, ... (docs/sharding.md)");
  app.add_option("--workers", workers, "DataLoader worker threads")->check(CLI::NonNegativeNumber);
  app.add_flag("--synthetic", synthetic, "Train on SyntheticCIFAR10 instead of CIFAR-10");
  app.add_option("--synthetic-size", synthetic_size,
                 "Training images of SyntheticCIFAR10 (validation: a fifth)")
      ->check(CLI::PositiveNumber);
  app.add_option("--max-steps", max_steps, "Stop each epoch's training after this many batches");
  app.add_option("--seed", seed, "Seed for seed_everything");
  app.add_option("--log-dir", log_dir, "Where CSV and TensorBoard logs go");
  app.add_option("--checkpoint-dir", checkpoint_dir, "Where the per-epoch checkpoints go");
  app.add_option("--resume", resume, "Continue from this checkpoint (one of --checkpoint-dir's)");
  app.add_option("--require-accuracy", require_accuracy,
                 "Exit non-zero if the last validation accuracy is below this");
  app.add_flag("--profile", profile.enabled, "Print where each epoch's time goes");
  app.add_flag("--device-data", device_data,
               "Keep the images in device memory and augment per batch there (data::DeviceImages)");
  app.add_option("--matmul-precision", matmul_precision,
                 "float32 matmul precision, as torch.set_float32_matmul_precision: highest, high "
                 "(TF32 on tensor cores) or medium")
      ->check(CLI::IsMember({"highest", "high", "medium"}));
  app.add_flag("--channels-last", channels_last,
               "Model and input batches in channels_last (NHWC) memory format");
  app.add_flag("--cuda-graph", cuda_graph,
               "Record the training step in a CUDA graph and replay it per batch "
               "(cppfabric::CapturedStep; one device)");
  CLI11_PARSE(app, argc, argv);
  // Before the Fabric: its CUDA setup reads this to decide on the TF32 hint.
  at::globalContext().setFloat32MatmulPrecision(matmul_precision);

  cppfabric::DevicesArg devices_arg = devices;
  if (!devices.empty() && devices.find_first_not_of("-0123456789") == std::string::npos)
    devices_arg = std::stoi(devices);
  // Separate roots, so each logger numbers its versions on its own.
  auto csv = std::make_shared<cppfabric::loggers::CSVLogger>(log_dir + "/csv", "cifar10");
  auto tensorboard =
      std::make_shared<cppfabric::loggers::TensorBoardLogger>(log_dir + "/tensorboard", "cifar10");
  Fabric fabric({.accelerator = accelerator,
                 .strategy = strategy,
                 .devices = devices_arg,
                 .precision = precision,
                 .loggers = {csv, tensorboard}});
  fabric.launch();
  Fabric::seed_everything(seed);

  // Data: flip + crop + normalize for training, normalize for validation.
  const std::vector<double> mean{0.4914, 0.4822, 0.4465}, stdev{0.2470, 0.2435, 0.2616};
  T::Transform train_transform = T::Compose(
      {T::RandomHorizontalFlip(), T::RandomCrop(32, 4), T::ToTensor(), T::Normalize(mean, stdev)});
  T::Transform val_transform = T::Compose({T::ToTensor(), T::Normalize(mean, stdev)});

  std::shared_ptr<data::Dataset> train_set, val_set;
  if (!synthetic) {
    auto guard = fabric.rank_zero_first();  // one process downloads, the others wait
    try {
      train_set =
          std::make_shared<data::datasets::CIFAR10>(data_dir, true, download, train_transform);
      val_set = std::make_shared<data::datasets::CIFAR10>(data_dir, false, download, val_transform);
    } catch (const std::runtime_error& e) {
      std::string reason = e.what();
      if (const auto cut = reason.find(". "); cut != std::string::npos) reason.resize(cut);
      fabric.print("CIFAR-10 unavailable ({}); training on SyntheticCIFAR10 instead.", reason);
      synthetic = true;
    }
  }
  if (synthetic) {
    train_set =
        std::make_shared<data::datasets::SyntheticCIFAR10>(synthetic_size, true, train_transform);
    val_set = std::make_shared<data::datasets::SyntheticCIFAR10>(
        std::max<std::size_t>(1, synthetic_size / 5), false, val_transform);
  }
  data::DataLoader train_loader(
      train_set,
      {.batch_size = batch_size, .shuffle = true, .num_workers = workers, .pin_memory = true});
  data::DataLoader val_loader(val_set, {.batch_size = 2 * batch_size, .num_workers = workers});
  if (device_data) {
    // Not in the seed: the images stay in device memory as uint8, and flip, crop and normalize
    // run per batch there (the same batches as the transforms above, bit for bit).
    auto raw = [](const std::shared_ptr<data::Dataset>& set) {
      if (auto* real = dynamic_cast<data::datasets::CIFAR10*>(set.get()))
        return std::pair{real->images(), real->labels()};
      auto& synthetic_set = dynamic_cast<data::datasets::SyntheticCIFAR10&>(*set);
      return std::pair{synthetic_set.images(), synthetic_set.labels()};
    };
    const auto [train_images, train_labels] = raw(train_set);
    const auto [val_images, val_labels] = raw(val_set);
    data::DeviceImages train_on_device(train_images, train_labels, fabric.device(),
                                       {.flip = T::RandomHorizontalFlip(),
                                        .crop = T::RandomCrop(32, 4),
                                        .normalize = T::Normalize(mean, stdev)});
    data::DeviceImages val_on_device(val_images, val_labels, fabric.device(),
                                     {.normalize = T::Normalize(mean, stdev)});
    train_loader = data::DataLoader(
        train_on_device.dataset(),
        {.batch_size = batch_size, .shuffle = true, .collate_fn = train_on_device.collate()});
    val_loader = data::DataLoader(val_on_device.dataset(), {.batch_size = 2 * batch_size,
                                                            .collate_fn = val_on_device.collate()});
  }

  SimpleCNN model(10);
  if (channels_last) to_channels_last(*model);
  const auto adamw_options = torch::optim::AdamWOptions(3e-4).weight_decay(1e-2);
  // --cuda-graph records the optimizer step too: cppfabric's fused AdamW (the same update) can be.
  std::shared_ptr<torch::optim::AdamW> optimizer =
      cuda_graph ? std::make_shared<cppfabric::optim::AdamW>(model->parameters(), adamw_options)
                 : std::make_shared<torch::optim::AdamW>(model->parameters(), adamw_options);
  cppfabric::optim::CosineAnnealingLR scheduler(*optimizer, /*T_max=*/20);

  auto [net, opt] = fabric.setup(model, optimizer);
  auto [train, val] = fabric.setup_dataloaders(train_loader, val_loader);
  if (channels_last) {
    int nhwc = 0;
    for (const auto& p : model->parameters()) {
      nhwc += p.dim() == 4 && p.is_contiguous(torch::MemoryFormat::ChannelsLast) ? 1 : 0;
    }
    fabric.print("channels_last: {} convolution weights and every input batch in NHWC", nhwc);
  }

  const auto step_once = train_step(fabric, net, opt, [&profile, cuda_graph] {
    if (!cuda_graph) profile.mark("forward+backward");
  });
  std::optional<cppfabric::CapturedStep> captured;
  if (cuda_graph) {
    captured.emplace(fabric, opt, step_once);
    if (!captured->eager_reason().empty())
      fabric.print("--cuda-graph: {}", captured->eager_reason());
  }

  // Resume: the objects are restored in place; what is left is returned (the remainder).
  int start_epoch = 0;
  double best_val_acc = 0.0;
  if (!resume.empty()) {
    cppfabric::State remainder =
        fabric.load(resume, {{"model", net}, {"optimizer", opt}, {"scheduler", scheduler}});
    start_epoch = static_cast<int>(remainder.get<int64_t>("epoch")) + 1;
    best_val_acc = remainder.get<double>("best_val_acc");
    fabric.print("Resumed from {} at epoch {} (best val acc so far {:.4f})", resume, start_epoch,
                 best_val_acc);
  }

  double accuracy = 0.0;
  for (int epoch = start_epoch; epoch < epochs; ++epoch) {
    const auto start = std::chrono::steady_clock::now();
    profile.cuda = fabric.device().is_cuda();
    profile.begin(captured.has_value());
    net.train();
    const auto on_device = torch::TensorOptions().device(fabric.device());
    auto loss_sum = torch::zeros({}, on_device);
    // Running accuracy of this epoch, on the device (read only when a line is printed).
    auto running_correct = torch::zeros({}, on_device.dtype(torch::kLong));
    int64_t running_total = 0;
    int64_t batch_idx = 0;
    for (auto& batch : train) {
      profile.mark("data wait");
      if (channels_last) batch.data = batch.data.contiguous(torch::MemoryFormat::ChannelsLast);
      const auto results = captured ? (*captured)({batch.data, batch.target})
                                    : step_once({batch.data, batch.target});
      const auto& loss = results[0];
      profile.mark(captured ? "forward+backward+optimizer" : "optimizer");
      loss_sum += loss.to(torch::kFloat32);  // stays on the device: no sync per batch
      running_correct += results[1].argmax(1).eq(batch.target).sum();
      running_total += batch.target.size(0);
      if (batch_idx % 100 == 0) {
        fabric.print("Epoch {} | Batch {}/{} | Loss: {:.4f} | Acc: {:.2f}%", epoch, batch_idx,
                     train.size(), loss.item<double>(),
                     100.0 * running_correct.item<double>() / static_cast<double>(running_total));
      }
      profile.mark("other");
      if (++batch_idx == max_steps) break;
    }
    scheduler.step();
    // The epoch's mean training loss, averaged over the ranks.
    const double train_loss =
        fabric.all_reduce(loss_sum / std::max<int64_t>(batch_idx, 1)).item<double>();

    profile.mark("other");
    net.eval();
    auto correct = torch::zeros({}, torch::kLong).to(fabric.device());
    auto total = torch::zeros({}, torch::kLong).to(fabric.device());
    {
      torch::NoGradGuard no_grad;
      for (auto& batch : val) {
        if (channels_last) batch.data = batch.data.contiguous(torch::MemoryFormat::ChannelsLast);
        correct += net(batch.data).argmax(1).eq(batch.target).sum();
        total += batch.target.size(0);
      }
    }
    correct = fabric.all_reduce(correct, "sum");
    total = fabric.all_reduce(total, "sum");
    accuracy = correct.item<double>() / std::max<double>(1.0, total.item<double>());
    best_val_acc = std::max(best_val_acc, accuracy);
    profile.mark("validation");
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    fabric.print("Epoch {} | Val acc: {:.4f} | Best: {:.4f} | lr {:.2e} | {:.1f} s", epoch,
                 accuracy, best_val_acc, scheduler.get_last_lr()[0], seconds);
    fabric.log_dict({{"train/loss", train_loss},
                     {"val/acc", accuracy},
                     {"lr", scheduler.get_last_lr()[0]},
                     {"epoch_time_s", seconds}},
                    epoch);

    profile.mark("other");
    // One checkpoint per epoch; Python opens it with torch.load(..., weights_only=True).
    // `--resume` reads it back; "epoch" and "best_val_acc" come back as the remainder.
    fabric.save(fmt::format("{}/epoch_{}.ckpt", checkpoint_dir, epoch),
                {{"model", net},
                 {"optimizer", opt},
                 {"scheduler", scheduler},
                 {"epoch", epoch},
                 {"best_val_acc", best_val_acc}});
    profile.mark("checkpoint");
    if (profile.enabled) fabric.print("Profile epoch {}: {}", epoch, profile.summary());
  }

  if (require_accuracy >= 0 && accuracy < require_accuracy) {
    fabric.print("FAILED: validation accuracy {:.4f} is below the required {:.4f}", accuracy,
                 require_accuracy);
    return EXIT_FAILURE;
  }
  return EXIT_SUCCESS;
}
