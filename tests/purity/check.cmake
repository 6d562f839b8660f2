# Run by ctest (purity_probe): builds the target sc_purity_probe, which links
# tests/purity/probe.c against scpure alone, and passes only when that link
# fails naming every symbol of SYMBOLS as undefined (GNU ld: "undefined
# reference to `x'", lld: "undefined symbol: x"). The probe's object is
# compiled by the normal build, so what fails here is the link.
# -DBUILD_DIR=... -DSYMBOLS=a;b;c
execute_process(COMMAND ${CMAKE_COMMAND} --build ${BUILD_DIR} --target sc_purity_probe
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
set(all "${out}${err}")
if(rc EQUAL 0)
  message(FATAL_ERROR "sc_purity_probe linked against scpure: the pure library has gained an I/O "
                      "library or module (see CMakeLists.txt, 'the two libraries')")
endif()
set(missing "")
foreach(sym ${SYMBOLS})
  if(NOT all MATCHES "undefined (reference to .|symbol: )${sym}")
    list(APPEND missing ${sym})
  endif()
endforeach()
if(missing)
  message(FATAL_ERROR "linking sc_purity_probe failed, but not (only) because these stayed undefined "
                      "(they resolve from scpure, or the failure is another one): ${missing}\n${all}")
endif()
message(STATUS "scpure resolves none of: ${SYMBOLS}")
