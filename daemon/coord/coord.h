/*
 * coord - one coordinator shard: the nodes it knows and their liveness.
 */
#ifndef CKSM_COORD_H
#define CKSM_COORD_H

#include "config.h"

/* Run shard `shard` of cfg until SIGTERM. Returns a process exit code. */
int coord_main(const struct config *cfg, unsigned shard);

#endif
