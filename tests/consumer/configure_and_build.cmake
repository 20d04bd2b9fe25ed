# Configures (from scratch) and builds tests/consumer; run by the consumer_build* tests:
#   cmake -DSOURCE_DIR=... -DBINARY_DIR=... -DINIT_CACHE=... -DGENERATOR=... -P configure_and_build.cmake
# INIT_CACHE is the -C file that register.cmake writes with the main build's settings.
foreach(var SOURCE_DIR BINARY_DIR INIT_CACHE GENERATOR)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "configure_and_build.cmake: pass -D${var}=...")
  endif()
endforeach()

execute_process(
  COMMAND ${CMAKE_COMMAND} --fresh -S ${SOURCE_DIR} -B ${BINARY_DIR} -G ${GENERATOR} -C ${INIT_CACHE}
  RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "configuring ${SOURCE_DIR} in ${BINARY_DIR} failed (${result})")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build ${BINARY_DIR} RESULT_VARIABLE result)
if(NOT result EQUAL 0)
  message(FATAL_ERROR "building ${BINARY_DIR} failed (${result})")
endif()
