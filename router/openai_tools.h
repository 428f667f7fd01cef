// OpenAI tool calling on chat completions: the request's `tools` and
// `tool_choice`, the grammar that forces a call (tool_choice "required" or
// a named function), and the tool calls found in what the model wrote.
//
// Two output styles are recognised, as vLLM's hermes and llama3_json
// parsers do: Hermes/Qwen <tool_call>{"name": ..., "arguments": {...}}
// </tool_call> blocks anywhere in the text, and a whole output that is one
// JSON call {"name": ..., "arguments"|"parameters": {...}} (or a list of
// them), Llama 3.x style. Forced calls are generated in the second style,
// under a JSON schema built from the tools' parameters.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace pdserve::router::openai {

struct ApiError;

struct ToolDef {
  std::string name;
  nlohmann::ordered_json definition;  // the request's {"type": "function", "function": {...}}
  nlohmann::ordered_json parameters;  // JSON schema of the arguments ({} when absent)
};

enum class ToolChoice { kNone, kAuto, kRequired, kNamed };

struct ToolRequest {
  std::vector<ToolDef> tools;
  ToolChoice choice = ToolChoice::kAuto;
  std::string named;  // kNamed: the function to call
  // Tools reach the template and calls are parsed from the output.
  bool enabled() const { return !tools.empty() && choice != ToolChoice::kNone; }
  bool forced() const { return choice == ToolChoice::kRequired || choice == ToolChoice::kNamed; }
};

// Reads "tools" and "tool_choice" (either may be null). A 400 naming the
// parameter for a malformed definition, a bad schema, or a choice naming no
// defined tool.
std::optional<ApiError> ParseTools(const nlohmann::ordered_json* tools,
                                   const nlohmann::ordered_json* tool_choice, ToolRequest* out);

// The tool definitions as the chat template receives them (JSON array).
std::string ToolsJson(const ToolRequest& request);

// JSON schema of a forced call: {"name": <a tool's name>, "arguments":
// <its parameters>}, anyOf over the tools allowed.
std::string ForcedCallSchema(const ToolRequest& request);

struct ToolCall {
  std::string id;  // call_<24 hex>
  std::string name;
  std::string arguments;  // JSON object text
};

struct ParsedOutput {
  std::string content;  // the text outside tool calls (trimmed when there are calls)
  std::vector<ToolCall> calls;
};

// Finds tool calls in `text`. Calls naming a function the request did not
// define, or whose JSON does not parse, stay text.
ParsedOutput ParseToolCalls(const std::string& text, const ToolRequest& request);

// Streaming: passes content through as it comes, but holds back what may be
// the start of a tool call (a "<tool_call>" or a leading JSON object) until
// the output ends.
class ToolCallStreamer {
 public:
  // Content the client may see now.
  std::string Push(const std::string& text);
  // At the end: the content still held (calls removed) and the calls.
  ParsedOutput Finish(const ToolRequest& request);

 private:
  std::string all_;       // every byte of output so far
  size_t streamed_ = 0;   // all_[0, streamed_) went out as content
  bool holding_ = false;  // a call may have started: hold the rest
};

}  // namespace pdserve::router::openai
