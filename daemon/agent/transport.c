/*
 * transport - see transport.h: choosing the kind, and what every kind's
 * readers share.
 */
#include "transport.h"

#include <errno.h>
#include <string.h>

#include "inject.h"
#include "log.h"

static const struct transport_kind *const kinds[] = {
	&transport_tcp, /* "auto" takes the first kind that can run */
};

const struct transport_kind *transport_kind_choose(const struct config *cfg)
{
	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
		if (!strcmp(cfg->transport, "auto") || !strcmp(cfg->transport, kinds[i]->name))
			return kinds[i];
	log_error("[agent] transport = %s: no such transport on this node", cfg->transport);
	return NULL;
}

int transport_read_checked(struct transport *t, const struct dup_loc *d,
			   const struct cid_domain *dom, const struct cid *id, void *buf)
{
	int rc = inject("replica_read_fails") ? -EIO : t->ops->read(t, d, id, buf);

	if (rc)
		return rc;
	if (cid_eq(cid_of(dom, buf), *id))
		return 0;
	log_warn("node %u slot %u/%u: bytes that are not the content they should hold", d->node,
		 d->slot, d->gen);
	return -EBADMSG;
}

void transport_destroy(struct transport *t)
{
	if (t)
		t->ops->destroy(t);
}

uint64_t transport_served(struct data_server *ds)
{
	return atomic_load(&ds->served);
}

void transport_serve_stop(struct data_server *ds)
{
	if (ds)
		ds->kind->serve_stop(ds);
}
