/*
 * hll - see hll.h (Flajolet et al., with linear counting for small sets).
 */
#include "hll.h"

#include <math.h>
#include <string.h>

void hll_clear(struct hll *h)
{
	memset(h->r, 0, sizeof(h->r));
}

void hll_merge(struct hll *into, const struct hll *from)
{
	for (unsigned i = 0; i < HLL_REGISTERS; i++)
		if (from->r[i] > into->r[i])
			into->r[i] = from->r[i];
}

bool hll_registers_valid(const uint8_t *r, size_t n)
{
	uint8_t max = 0;

	for (size_t i = 0; i < n; i++)
		max = r[i] > max ? r[i] : max;
	return max <= HLL_RANK_MAX;
}

double hll_estimate(const struct hll *h)
{
	const double m = HLL_REGISTERS, alpha = 0.7213 / (1 + 1.079 / m);
	double sum = 0, e;
	unsigned zeros = 0;

	for (unsigned i = 0; i < HLL_REGISTERS; i++) {
		sum += ldexp(1.0, -h->r[i]);
		zeros += h->r[i] == 0;
	}
	e = alpha * m * m / sum;
	if (e <= 2.5 * m && zeros)
		e = m * log(m / zeros); /* linear counting */
	return e;
}
