// Escaping for untrusted text in log lines (a separate header so that
// common/log.h, included everywhere, stays small).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace pdserve {

// What a log line may hold of untrusted text: newlines and carriage returns
// as \n and \r, other C0/C1 control characters and DEL as \xNN (tab stays).
// Every PDS_LOG message passes through it, so a client cannot forge log
// lines or send escape sequences to a terminal.
std::string EscapeLogText(std::string_view text);

// `text` escaped, cut at `max_bytes` ("..." marks a cut) and in double
// quotes: for ids, names and header values a peer chose.
std::string LogQuote(std::string_view text, size_t max_bytes = 256);

}  // namespace pdserve
