/*
 * cksm-rdmapeer - a hostile and a careful RDMA reader of a holder's pool
 * (rdma.c), for tests in a guest with soft-RoCE.
 *
 *   cksm-rdmapeer HOST:PORT KEY_FILE
 *
 * Connects to the holder's rdma_cm port, in turn:
 *   nodata   no private data                     refused
 *   badkey   a request MACed with another key    refused ("bad key")
 *   stale    a request ten minutes old           refused ("stale request")
 *   good     a right request                     accepted; the accept's MAC
 *            is checked; a READ of slot 0 completes; a READ past the pool
 *            fails at this end (the holder's device refuses it)
 *   replay   the good request again, from the same address and port
 *                                                refused ("replayed request")
 *   again    a new right request                 accepted, slot 0 read
 * Prints one JSON line per case, {"case", "result", "why"}; exits 0 when
 * each went as said.
 */
#include <errno.h>
#include <sodium.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#include "agent/rdmawire.h"
#include "auth.h"
#include "netaddr.h"

struct qp {
	struct rdma_event_channel *ch;
	struct rdma_cm_id *id;
	struct ibv_pd *pd;
	struct ibv_cq *cq;
	struct ibv_mr *mr;
	uint8_t buf[4096];
};

static struct rdma_cm_event *next_event(struct qp *q, enum rdma_cm_event_type *type)
{
	struct rdma_cm_event *ev;

	if (rdma_get_cm_event(q->ch, &ev))
		return NULL;
	*type = ev->event;
	return ev;
}

/* Resolve and make a queue pair, bound to src if given. 0 or -1. */
static int qp_open(struct qp *q, struct sockaddr_storage *dst, struct sockaddr_storage *src)
{
	struct ibv_qp_init_attr qa = { 0 };
	enum rdma_cm_event_type t;
	struct rdma_cm_event *ev;

	memset(q, 0, sizeof(*q));
	q->ch = rdma_create_event_channel();
	if (!q->ch || rdma_create_id(q->ch, &q->id, NULL, RDMA_PS_TCP))
		return -1;
	if (src && rdma_bind_addr(q->id, (struct sockaddr *)src))
		return -1;
	if (rdma_resolve_addr(q->id, NULL, (struct sockaddr *)dst, 2000) ||
	    !(ev = next_event(q, &t)) || rdma_ack_cm_event(ev) || t != RDMA_CM_EVENT_ADDR_RESOLVED)
		return -1;
	if (rdma_resolve_route(q->id, 2000) || !(ev = next_event(q, &t)) || rdma_ack_cm_event(ev) ||
	    t != RDMA_CM_EVENT_ROUTE_RESOLVED)
		return -1;
	q->pd = ibv_alloc_pd(q->id->verbs);
	q->cq = q->pd ? ibv_create_cq(q->id->verbs, 4, NULL, NULL, 0) : NULL;
	q->mr = q->cq ? ibv_reg_mr(q->pd, q->buf, sizeof(q->buf), IBV_ACCESS_LOCAL_WRITE) : NULL;
	if (!q->mr)
		return -1;
	qa.send_cq = qa.recv_cq = q->cq;
	qa.qp_type = IBV_QPT_RC;
	qa.cap.max_send_wr = qa.cap.max_recv_wr = 2;
	qa.cap.max_send_sge = qa.cap.max_recv_sge = 1;
	return rdma_create_qp(q->id, q->pd, &qa) ? -1 : 0;
}

static void qp_close(struct qp *q)
{
	if (q->id && q->id->qp) {
		rdma_disconnect(q->id);
		rdma_destroy_qp(q->id);
	}
	if (q->mr)
		ibv_dereg_mr(q->mr);
	if (q->cq)
		ibv_destroy_cq(q->cq);
	if (q->pd)
		ibv_dealloc_pd(q->pd);
	if (q->id)
		rdma_destroy_id(q->id);
	if (q->ch)
		rdma_destroy_event_channel(q->ch);
	memset(q, 0, sizeof(*q));
}

/* Connect with data: 1 accepted (rep copied), 0 refused (why copied), -1 error. */
static int try_connect(struct qp *q, const void *data, uint8_t len, struct conn_rep *rep, char *why,
		       size_t wl)
{
	struct rdma_conn_param cp = { .private_data = data,
				      .private_data_len = len,
				      .initiator_depth = 1,
				      .retry_count = 7,
				      .rnr_retry_count = 7 };
	enum rdma_cm_event_type t;
	struct rdma_cm_event *ev;
	int rc = -1;

	why[0] = '\0';
	if (rdma_connect(q->id, &cp) || !(ev = next_event(q, &t)))
		return -1;
	if (t == RDMA_CM_EVENT_ESTABLISHED && ev->param.conn.private_data_len >= sizeof(*rep)) {
		memcpy(rep, ev->param.conn.private_data, sizeof(*rep));
		rc = 1;
	} else if (t == RDMA_CM_EVENT_REJECTED) {
		size_t l = ev->param.conn.private_data ? strnlen(ev->param.conn.private_data,
								 ev->param.conn.private_data_len)
						       : 0;

		snprintf(why, wl, "%.*s", (int)l, (const char *)ev->param.conn.private_data);
		rc = 0;
	} else {
		snprintf(why, wl, "%s", rdma_event_str(t));
	}
	rdma_ack_cm_event(ev);
	return rc;
}

/* One signalled READ of len bytes at remote addr: its completion status. */
static int read_once(struct qp *q, uint64_t addr, uint32_t rkey)
{
	struct ibv_sge sge = { (uintptr_t)q->buf, sizeof(q->buf), q->mr->lkey };
	struct ibv_send_wr wr = { .wr_id = 1,
				  .sg_list = &sge,
				  .num_sge = 1,
				  .opcode = IBV_WR_RDMA_READ,
				  .send_flags = IBV_SEND_SIGNALED },
			   *bad;
	struct ibv_wc wc;
	int n;

	wr.wr.rdma.remote_addr = addr;
	wr.wr.rdma.rkey = rkey;
	if (ibv_post_send(q->id->qp, &wr, &bad))
		return -1;
	for (long i = 0; i < 200000000L; i++) {
		n = ibv_poll_cq(q->cq, 1, &wc);
		if (n)
			return n < 0 ? -1 : (int)wc.status;
	}
	return -1;
}

static int failures;

static void report(const char *name, bool ok, const char *result, const char *why)
{
	printf("{\"case\":\"%s\",\"result\":\"%s\",\"why\":\"%s\",\"as_said\":%s}\n", name, result,
	       why, ok ? "true" : "false");
	fflush(stdout);
	failures += !ok;
}

/* A request case that must be refused, with a reason holding want. */
static void refused(const char *name, struct sockaddr_storage *dst, struct conn_req *r, uint8_t len,
		    const char *want)
{
	struct qp q;
	struct conn_rep rep;
	char why[160] = "";
	int rc = qp_open(&q, dst, NULL) ? -1 : try_connect(&q, r, len, &rep, why, sizeof(why));

	report(name, rc == 0 && strstr(why, want),
	       rc == 1 ? "accepted"
	       : rc    ? "error"
		       : "refused",
	       why);
	qp_close(&q);
}

/* A right request from q: accepted, slot 0 read, a READ past the pool refused. */
static bool good(const char *name, struct qp *q, const struct auth_key *key, struct conn_req *r)
{
	struct conn_rep rep;
	uint64_t base;
	uint32_t rkey, slots;
	char why[160];
	int rc;

	conn_req_make(r, key, rdma_get_local_addr(q->id), rdma_get_peer_addr(q->id), time(NULL));
	rc = try_connect(q, r, sizeof(*r), &rep, why, sizeof(why));
	if (rc != 1 || conn_rep_open(&rep, key, r->nonce, &base, &rkey, &slots)) {
		report(name, false, rc == 1 ? "accept not MACed" : "not accepted", why);
		return false;
	}
	rc = read_once(q, base, rkey);
	if (rc != IBV_WC_SUCCESS) {
		report(name, false, "slot 0 not read", ibv_wc_status_str((enum ibv_wc_status)rc));
		return false;
	}
	if (!strcmp(name, "good")) {
		rc = read_once(q, base + (uint64_t)slots * 4096, rkey);
		snprintf(why, sizeof(why), "a READ past the pool: %s",
			 rc < 0 ? "no completion" : ibv_wc_status_str((enum ibv_wc_status)rc));
		report(name, rc > 0, "accepted, slot 0 read", why);
		return rc > 0;
	}
	report(name, true, "accepted, slot 0 read", "");
	return true;
}

int main(int argc, char **argv)
{
	struct sockaddr_storage dst, src;
	struct auth_key key, other;
	struct conn_req r, kept;
	struct qp q;
	char err[256];

	if (argc != 3 || netaddr_parse(argv[1], &dst) ||
	    auth_key_load(&key, argv[2], err, sizeof(err))) {
		fprintf(stderr, "usage: cksm-rdmapeer HOST:PORT KEY_FILE\n");
		return 2;
	}
	if (auth_init())
		return 1;
	refused("nodata", &dst, NULL, 0, "no cksm connect request");
	randombytes_buf(other.k, sizeof(other.k));
	if (qp_open(&q, &dst, NULL))
		return 1;
	conn_req_make(&r, &other, rdma_get_local_addr(q.id), rdma_get_peer_addr(q.id), time(NULL));
	qp_close(&q);
	refused("badkey", &dst, &r, sizeof(r), "bad key");
	{
		/* A request MACed right, ten minutes old. */
		struct qp s;
		struct conn_rep rep;
		char why[160];
		int rc;

		if (qp_open(&s, &dst, NULL))
			return 1;
		conn_req_make(&r, &key, rdma_get_local_addr(s.id), rdma_get_peer_addr(s.id),
			      time(NULL) - 600);
		rc = try_connect(&s, &r, sizeof(r), &rep, why, sizeof(why));
		report("stale", rc == 0 && strstr(why, "stale request"),
		       rc == 1 ? "accepted"
		       : rc    ? "error"
			       : "refused",
		       why);
		qp_close(&s);
	}
	if (qp_open(&q, &dst, NULL))
		return 1;
	memcpy(&src, rdma_get_local_addr(q.id), sizeof(src));
	good("good", &q, &key, &r);
	kept = r;
	qp_close(&q);
	{
		/* The same bytes again, from the same address and port. */
		struct conn_rep rep;
		char why[160];
		int rc = qp_open(&q, &dst, &src)
				 ? -1
				 : try_connect(&q, &kept, sizeof(kept), &rep, why, sizeof(why));

		report("replay", rc == 0 && strstr(why, "replayed request"),
		       rc == 1 ? "accepted"
		       : rc    ? "error (could not bind the same port)"
			       : "refused",
		       rc < 0 ? "" : why);
		qp_close(&q);
	}
	if (qp_open(&q, &dst, NULL))
		return 1;
	good("again", &q, &key, &r);
	qp_close(&q);
	return failures ? 1 : 0;
}
