# run_example.cmake - runs one example program and checks both its exit status
# and its output, which a plain add_test() with PASS_REGULAR_EXPRESSION cannot
# do (that property makes ctest ignore the exit status).
#
#   cmake -DPROG=<exe> "-DARGS=a b" -DEXPECT=<regex> [-DTIMEOUT=<s>] -P run_example.cmake
#
# The output is echoed so ctest --output-on-failure shows it. Sanitizer reports
# fail the test even when the program exits 0.
separate_arguments(ARGS UNIX_COMMAND "${ARGS}")
if(NOT DEFINED TIMEOUT)
  set(TIMEOUT 50)
endif()
execute_process(COMMAND ${PROG} ${ARGS}
                RESULT_VARIABLE rc
                OUTPUT_VARIABLE out
                ERROR_VARIABLE err
                TIMEOUT ${TIMEOUT})
message("${out}")
if(err)
  message("--- stderr ---\n${err}")
endif()
if(NOT rc STREQUAL "0")
  message(FATAL_ERROR "${PROG} ${ARGS}: exit status '${rc}', expected 0")
endif()
if(NOT out MATCHES "${EXPECT}")
  message(FATAL_ERROR "${PROG}: output does not match '${EXPECT}'")
endif()
foreach(bad "ERROR: AddressSanitizer" "ERROR: LeakSanitizer" "WARNING: ThreadSanitizer" "runtime error:")
  string(FIND "${out}${err}" "${bad}" at)
  if(NOT at EQUAL -1)
    message(FATAL_ERROR "${PROG}: sanitizer report ('${bad}')")
  endif()
endforeach()
