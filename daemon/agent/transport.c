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
	&transport_rdma, /* "auto" takes the first kind that can run */
	&transport_tcp,
};

const struct transport_kind *transport_kind_choose(const struct config *cfg)
{
	bool any = !strcmp(cfg->transport, "auto");

	for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
		const struct transport_kind *k = kinds[i];
		char why[256] = "";

		if (!any && strcmp(cfg->transport, k->name))
			continue;
		if (!k->usable || k->usable(cfg, why, sizeof(why))) {
			log_info("data transport: %s", k->name);
			return k;
		}
		if (!any) {
			log_error("[agent] transport = %s cannot run here: %s", k->name, why);
			return NULL;
		}
		log_info("data transport: no %s (%s)", k->name, why);
	}
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
	return ds->kind->served ? ds->kind->served(ds) : atomic_load(&ds->served);
}

void transport_serve_stop(struct data_server *ds)
{
	if (ds)
		ds->kind->serve_stop(ds);
}
