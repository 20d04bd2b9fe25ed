# Registers the `consumer` CTest tests; tests/CMakeLists.txt include()s this file. They check that
# another CMake project can find_package(cppfabric) and build and run against it:
#   consumer_install            cmake --install into ${PROJECT_BINARY_DIR}/consumer-prefix
#   consumer_build              configure + build tests/consumer against that prefix
#   consumer_run                run the program built by consumer_build
#   consumer_build_tree         configure + build tests/consumer against the build tree
#                               (cppfabric_DIR=${PROJECT_BINARY_DIR}, the export() file)
#   consumer_run_build_tree     run the program built by consumer_build_tree
# Fixtures order them, so `ctest -R consumer_run` also installs and builds first.
# Needs: Torch_DIR from find_package(Torch) in the main build.

set(_cppfabric_consumer_src ${CMAKE_CURRENT_LIST_DIR})
set(_cppfabric_consumer_prefix ${PROJECT_BINARY_DIR}/consumer-prefix)
# Torch_DIR is <torch>/share/cmake/Torch; its parent is torch.utils.cmake_prefix_path.
get_filename_component(_cppfabric_torch_prefix "${Torch_DIR}/.." ABSOLUTE)

# Writes an initial-cache file (cmake -C) that hands the main build's toolchain settings to the
# consumer: same compiler, launcher (ccache), flags (sanitizers), build type and CUDA compiler,
# then `extra` (more set() lines). Lists such as the launcher survive intact, which a -D on a
# test's command line would not.
function(_cppfabric_consumer_init_cache file extra)
  set(content "# Written by tests/consumer/register.cmake: settings of the main cppfabric build.\n")
  foreach(var CMAKE_BUILD_TYPE CMAKE_CXX_COMPILER CMAKE_CXX_COMPILER_LAUNCHER CMAKE_CXX_FLAGS
              CMAKE_EXE_LINKER_FLAGS CMAKE_SHARED_LINKER_FLAGS CMAKE_MAKE_PROGRAM
              CMAKE_CUDA_COMPILER CMAKE_CUDA_ARCHITECTURES TORCH_CUDA_ARCH_LIST)
    if(NOT "${${var}}" STREQUAL "")
      string(APPEND content "set(${var} [==[${${var}}]==] CACHE STRING \"\")\n")
    endif()
  endforeach()
  string(APPEND content "set(CMAKE_FIND_USE_PACKAGE_REGISTRY OFF CACHE BOOL \"\")\n${extra}")
  file(CONFIGURE OUTPUT ${file} CONTENT "${content}" @ONLY)
endfunction()

_cppfabric_consumer_init_cache(${PROJECT_BINARY_DIR}/consumer-install.cmake "\
set(CMAKE_PREFIX_PATH [==[${_cppfabric_consumer_prefix};${_cppfabric_torch_prefix}]==] CACHE STRING \"\")
set(CPPFABRIC_CONSUMER_EXPECTED_DIR [==[${_cppfabric_consumer_prefix}/${CMAKE_INSTALL_LIBDIR}/cmake/cppfabric]==] CACHE PATH \"\")
")
_cppfabric_consumer_init_cache(${PROJECT_BINARY_DIR}/consumer-build-tree.cmake "\
set(CMAKE_PREFIX_PATH [==[${_cppfabric_torch_prefix}]==] CACHE STRING \"\")
set(cppfabric_DIR [==[${PROJECT_BINARY_DIR}]==] CACHE PATH \"\")
set(CPPFABRIC_CONSUMER_EXPECTED_DIR [==[${PROJECT_BINARY_DIR}]==] CACHE PATH \"\")
")

# ---------------------------------------------------------------- against the install prefix
add_test(NAME consumer_install
  COMMAND ${CMAKE_COMMAND} --install ${PROJECT_BINARY_DIR} --prefix ${_cppfabric_consumer_prefix})
set_tests_properties(consumer_install PROPERTIES
  FIXTURES_SETUP cppfabric_consumer_installed LABELS consumer)

add_test(NAME consumer_build
  COMMAND ${CMAKE_COMMAND}
    -DSOURCE_DIR=${_cppfabric_consumer_src}
    -DBINARY_DIR=${PROJECT_BINARY_DIR}/consumer-build
    -DINIT_CACHE=${PROJECT_BINARY_DIR}/consumer-install.cmake
    -DGENERATOR=${CMAKE_GENERATOR}
    -P ${_cppfabric_consumer_src}/configure_and_build.cmake)
set_tests_properties(consumer_build PROPERTIES
  FIXTURES_REQUIRED cppfabric_consumer_installed
  FIXTURES_SETUP cppfabric_consumer_built
  LABELS consumer TIMEOUT 1200)

add_test(NAME consumer_run COMMAND ${PROJECT_BINARY_DIR}/consumer-build/cppfabric_consumer)
set_tests_properties(consumer_run PROPERTIES
  FIXTURES_REQUIRED cppfabric_consumer_built LABELS consumer)

# ---------------------------------------------------------------- against the build tree
add_test(NAME consumer_build_tree
  COMMAND ${CMAKE_COMMAND}
    -DSOURCE_DIR=${_cppfabric_consumer_src}
    -DBINARY_DIR=${PROJECT_BINARY_DIR}/consumer-build-tree
    -DINIT_CACHE=${PROJECT_BINARY_DIR}/consumer-build-tree.cmake
    -DGENERATOR=${CMAKE_GENERATOR}
    -P ${_cppfabric_consumer_src}/configure_and_build.cmake)
set_tests_properties(consumer_build_tree PROPERTIES
  FIXTURES_SETUP cppfabric_consumer_built_tree
  LABELS consumer TIMEOUT 1200)

add_test(NAME consumer_run_build_tree
  COMMAND ${PROJECT_BINARY_DIR}/consumer-build-tree/cppfabric_consumer)
set_tests_properties(consumer_run_build_tree PROPERTIES
  FIXTURES_REQUIRED cppfabric_consumer_built_tree LABELS consumer)

# ---------------------------------------------------------------- from the CPack packages
#   consumer_package_tgz   cpack -G TGZ, unpack, find_package(cppfabric) from it, build, run
#   consumer_package_deb   cpack -G DEB, dpkg-deb -x, build with pkg-config, run
# Both need the installable targets built (cpack installs them); label `package`.
find_program(CPPFABRIC_DPKG_DEB dpkg-deb)
find_program(CPPFABRIC_PKG_CONFIG pkg-config)
foreach(_kind tgz deb)
  if(_kind STREQUAL "deb" AND (NOT CPPFABRIC_DPKG_DEB OR NOT CPPFABRIC_PKG_CONFIG))
    continue()
  endif()
  add_test(NAME consumer_package_${_kind}
    COMMAND ${CMAKE_COMMAND}
      -DBUILD_DIR=${PROJECT_BINARY_DIR}
      -DWORK_DIR=${PROJECT_BINARY_DIR}/consumer-package-${_kind}
      -DSOURCE_DIR=${_cppfabric_consumer_src}
      -DINIT_CACHE=${PROJECT_BINARY_DIR}/consumer-install.cmake
      -DTORCH_PREFIX=${_cppfabric_torch_prefix}
      -DGENERATOR=${CMAKE_GENERATOR}
      -DCXX=${CMAKE_CXX_COMPILER}
      -DKIND=${_kind}
      -P ${_cppfabric_consumer_src}/package.cmake)
  set_tests_properties(consumer_package_${_kind} PROPERTIES
    LABELS "consumer;package" TIMEOUT 1800 RESOURCE_LOCK cpack)
endforeach()

# ---------------------------------------------------------------- the README's snippet
add_test(NAME readme_cmake_snippet
  COMMAND ${CMAKE_COMMAND}
    -DREADME=${PROJECT_SOURCE_DIR}/README.md
    -DWORK_DIR=${PROJECT_BINARY_DIR}/readme-cmake-snippet
    -DSOURCE_DIR=${_cppfabric_consumer_src}
    -DINIT_CACHE=${PROJECT_BINARY_DIR}/consumer-install.cmake
    -DGENERATOR=${CMAKE_GENERATOR}
    -P ${_cppfabric_consumer_src}/readme_snippet.cmake)
set_tests_properties(readme_cmake_snippet PROPERTIES
  FIXTURES_REQUIRED cppfabric_consumer_installed LABELS consumer TIMEOUT 1200)
