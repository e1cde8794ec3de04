# Turns IN (a text file) into OUT, a header defining whd::kIndexHtml.
file(READ ${IN} content)
set(delim "WHD_HTML_")
string(FIND "${content}" ")${delim}\"" found)
if(NOT found EQUAL -1)
  message(FATAL_ERROR "${IN} contains the raw-string delimiter")
endif()
file(WRITE ${OUT} "// Generated from web/index.html by cmake/embed.cmake; do not edit.\n#pragma once\nnamespace whd {\ninline constexpr const char* kIndexHtml = R\"${delim}(${content})${delim}\";\n}  // namespace whd\n")
