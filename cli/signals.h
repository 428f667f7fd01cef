// Termination signals for long-running subcommands: block SIGINT/SIGTERM in
// every thread (call first, before any thread starts), then wait for one.
#pragma once

namespace pdserve::cli {

void BlockTerminationSignals();
// Returns the signal number received.
int WaitForTerminationSignal();

}  // namespace pdserve::cli
