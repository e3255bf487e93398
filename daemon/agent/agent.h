/*
 * agent - the per-node daemon.
 */
#ifndef CKSM_AGENT_H
#define CKSM_AGENT_H

#include "config.h"

/* Run the node agent until SIGTERM. Returns a process exit code. */
int agent_main(const struct config *cfg);

#endif
