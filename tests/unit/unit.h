/*
 * unit - the common main of unit-test programs. Each program lists its
 * tests with --list and runs the one named by its argument (the runner,
 * tests/run.sh, starts one process per test with a timeout), or all.
 */
#ifndef CKSM_TEST_UNIT_H
#define CKSM_TEST_UNIT_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#define UNIT_MAIN(tests)                                                              \
	int main(int argc, char **argv)                                               \
	{                                                                             \
		if (argc > 1 && strcmp(argv[1], "--list") == 0) {                     \
			for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) \
				puts(tests[i].name);                                  \
			return 0;                                                     \
		}                                                                     \
		if (argc > 1)                                                         \
			cmocka_set_test_filter(argv[1]);                              \
		return cmocka_run_group_tests(tests, NULL, NULL);                     \
	}

/*
 * For model tests: when cond is false, say which run and step of the
 * random sequence broke, then what, and fail the test.
 */
#define unit_expect(run, step, cond, ...)                                   \
	do {                                                                \
		if (!(cond)) {                                              \
			fprintf(stderr, "run %u step %u: ", (run), (step)); \
			fprintf(stderr, __VA_ARGS__);                       \
			fputc('\n', stderr);                                \
			fail();                                             \
		}                                                           \
	} while (0)

#endif
