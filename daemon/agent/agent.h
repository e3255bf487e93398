/*
 * agent - the per-node daemon.
 */
#ifndef CKSM_AGENT_H
#define CKSM_AGENT_H

#include "config.h"

#include <stdbool.h>

/*
 * Run the node agent until SIGTERM. With restore, it evicts nothing: it
 * waits (at most RESTORE_WAIT_MS) for the processes an earlier agent left
 * to come back, brings every backed page home and exits, as at a stop.
 * Returns a process exit code.
 */
int agent_main(const struct config *cfg, bool restore);

#endif
