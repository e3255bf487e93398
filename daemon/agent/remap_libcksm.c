/*
 * remap_libcksm - the remap back-end of processes that load libcksm: the
 * requests travel as local.h messages on the process's own connection,
 * never waiting (MSG_DONTWAIT); libcksm runs them and answers a ZAP with
 * ZAPPED, which the loop hands to evict_zapped.
 */
#include <errno.h>
#include <sys/socket.h>

#include "backing_int.h"
#include "inject.h"

static int libcksm_zap(struct mm *m, uint64_t addr, uint64_t len, uint64_t token,
		       const void *expect)
{
	struct cksm_local r = cksm_local_msg(CKSM_LOCAL_ZAP);
	int rc;

	(void)expect;
	r.token = token;
	r.a = addr;
	r.b = len;
	if (inject("zap_unanswered"))
		return -EINPROGRESS;
	rc = cksm_local_send(m->sock, &r, -1, MSG_DONTWAIT);
	return rc ? -ESRCH : -EINPROGRESS; /* not sent: the process is gone */
}

int libcksm_ksm_advise(struct mm *m, uint64_t start, uint64_t len)
{
	struct cksm_local r = cksm_local_msg(CKSM_LOCAL_KSM);

	r.a = start;
	r.b = len;
	return cksm_local_send(m->sock, &r, -1, MSG_DONTWAIT);
}

const struct remap_ops remap_libcksm = {
	.name = "libcksm",
	.zap = libcksm_zap,
	.ksm_advise = libcksm_ksm_advise,
};
