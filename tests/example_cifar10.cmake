# Checks the CIFAR-10 example's console and resume behaviour; run by the example_cifar10_* tests:
#   cmake -DEXAMPLE=<cifar10 binary> -DWORK_DIR=... -DMODE=console|resume -P example_cifar10.cmake
# console: two CPU processes (fabric.launch()), "16-mixed" -> "bf16-mixed": the precision warning,
#          the AMP line and the pin_memory warning (only without CUDA) appear once per run, the seed line once per
#          rank with its rank prefix once, a progress line with the running accuracy.
# resume:  one epoch, then --resume from its checkpoint with --epochs 2: training continues at
#          epoch 1 with the saved best_val_acc.
foreach(var EXAMPLE WORK_DIR MODE)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "example_cifar10.cmake: pass -D${var}=...")
  endif()
endforeach()
file(REMOVE_RECURSE ${WORK_DIR})
set(common --synthetic --synthetic-size 1000 --accelerator cpu --workers 1 --batch-size 64
           --log-dir ${WORK_DIR}/logs --checkpoint-dir ${WORK_DIR}/checkpoints)

function(run_example out_var)
  execute_process(COMMAND ${EXAMPLE} ${common} ${ARGN} RESULT_VARIABLE result
                  OUTPUT_VARIABLE out ERROR_VARIABLE err TIMEOUT 600)
  set(text "${out}${err}")
  message(STATUS "cifar10 ${ARGN}:\n${text}")
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "cifar10 ${ARGN} exited with ${result}")
  endif()
  set(${out_var} "${text}" PARENT_SCOPE)
endfunction()

function(expect_count text pattern expected)
  string(REGEX MATCHALL "${pattern}" found "${text}")
  list(LENGTH found n)
  if(NOT n EQUAL expected)
    message(FATAL_ERROR "expected ${expected} line(s) matching '${pattern}', found ${n}")
  endif()
endfunction()
function(expect_at_most text pattern most)
  string(REGEX MATCHALL "${pattern}" found "${text}")
  list(LENGTH found n)
  if(n GREATER most)
    message(FATAL_ERROR "expected at most ${most} line(s) matching '${pattern}', found ${n}")
  endif()
endfunction()

if(MODE STREQUAL "console")
  run_example(text --epochs 1 --devices 2)
  expect_count("${text}" "AMP with fp16 is not supported on CPU" 1)
  expect_count("${text}" "Using bfloat16 Automatic Mixed Precision" 1)
  expect_at_most("${text}" "pin_memory" 1)  # the warning exists only without CUDA
  expect_count("${text}" "\\[rank: 0\\] \\[info\\] Seed set to 42" 1)
  expect_count("${text}" "\\[rank: 1\\] \\[info\\] Seed set to 42" 1)
  expect_count("${text}" "\\[rank: [0-9]\\][^\n]*\\[rank: " 0)
  expect_count("${text}" "Epoch 0 \\| Batch 0/[0-9]+ \\| Loss: [0-9.]+ \\| Acc: [0-9.]+%" 1)
elseif(MODE STREQUAL "resume")
  run_example(first --epochs 1 --devices 1)
  if(NOT EXISTS ${WORK_DIR}/checkpoints/epoch_0.ckpt)
    message(FATAL_ERROR "no checkpoint ${WORK_DIR}/checkpoints/epoch_0.ckpt")
  endif()
  string(REGEX MATCH "Epoch 0 \\| Val acc: [0-9.]+ \\| Best: ([0-9.]+)" line "${first}")
  set(best ${CMAKE_MATCH_1})
  run_example(second --epochs 2 --devices 1 --resume ${WORK_DIR}/checkpoints/epoch_0.ckpt)
  expect_count("${second}" "Resumed from [^\n]*epoch_0.ckpt at epoch 1 \\(best val acc so far ${best}\\)" 1)
  expect_count("${second}" "Epoch 0 \\|" 0)
  expect_count("${second}" "Epoch 1 \\| Val acc" 1)
else()
  message(FATAL_ERROR "MODE must be console or resume, got '${MODE}'")
endif()
