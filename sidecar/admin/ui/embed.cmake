# Turns a file into C source holding its bytes, so the admin page is part of
# the binary (no file to find at run time) and the build is reproducible
# (the output depends only on the input bytes and the symbol name).
#
#   cmake -DIN=page.html -DOUT=admin_page.c -DSYMBOL=sc_admin_page_html -P embed.cmake
#
# Defines `const char SYMBOL[]` (the bytes and a terminating NUL) and
# `const size_t SYMBOL_len` (the byte count without the NUL).
if(NOT IN OR NOT OUT OR NOT SYMBOL)
  message(FATAL_ERROR "embed.cmake: need -DIN=<file> -DOUT=<file.c> -DSYMBOL=<name>")
endif()
file(READ "${IN}" hex HEX)
string(LENGTH "${hex}" nhex)
math(EXPR nbytes "${nhex} / 2")
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
# 16 bytes a line keeps the file diffable and compilers happy.
set(one "0x[0-9a-f][0-9a-f],")
set(line "")
foreach(i RANGE 1 16)
  string(APPEND line "${one}")
endforeach()
string(REGEX REPLACE "(${line})" "\\1\n" bytes "${bytes}")
get_filename_component(name "${IN}" NAME)
set(text "/* Generated from ${name} by embed.cmake at build time; do not edit. */\n")
string(APPEND text "#include <stddef.h>\n\n")
string(APPEND text "const char ${SYMBOL}[] = {\n${bytes}\n0x00};\n")
string(APPEND text "const size_t ${SYMBOL}_len = ${nbytes};\n")
# Written only when different, so an unchanged page does not rebuild sccore.
if(EXISTS "${OUT}")
  file(READ "${OUT}" old)
  if(old STREQUAL text)
    return()
  endif()
endif()
file(WRITE "${OUT}" "${text}")
