/*
 * testcard: a simulated capture sound card for the tests, as an ALSA external I/O plugin.
 *
 * It behaves like a real card's capture side, through real alsa-lib:
 *   - S16_LE, interleaved, any rate and channel count the application asks for;
 *   - its hardware pointer advances with the wall clock (CLOCK_MONOTONIC since `start`);
 *   - the samples come from `infile` (raw interleaved S16_LE), taken at the card's position
 *     on the line, which runs on from the first `start` of the PCM whether anyone reads or not;
 *     past the end of the file the line is silent;
 *   - when the application falls a whole buffer behind the hardware pointer (the kernel's
 *     default stop_threshold), `pointer` returns -EPIPE: an overrun. What the line carried
 *     until the application prepares and restarts the stream is lost, as on a real card;
 *     after the restart the samples follow the wall clock again;
 *   - a timerfd ticking once per period since `start` is its poll descriptor, so a blocking
 *     read sleeps until a period is there, as with a card's period interrupt.
 *
 * Configuration (the shared object is named with `pcm_type.testcard { lib "/path/to.so" }`):
 *
 *   pcm.line { type testcard  infile "/path/to/line.raw" }
 */

/* Built as a shared object: alsa-lib looks up its versioned entry point (libtool passes -DPIC). */
#ifndef PIC
#define PIC
#endif

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <alsa/asoundlib.h>
#include <alsa/pcm_external.h>

typedef struct {
	snd_pcm_ioplug_t io;
	int infile;			/* raw S16_LE interleaved samples of the line */
	int64_t line_t0;		/* ns, CLOCK_MONOTONIC: first start; the line's position 0 */
	int64_t base;			/* the line's position (frames) at the current start */
	snd_pcm_uframes_t avail_min;
	int running;
	int overrun;
} testcard_t;

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The line's position in frames at monotonic time t. */
static int64_t line_position(const testcard_t *card, int64_t t)
{
	return (t - card->line_t0) * card->io.rate / 1000000000;
}

/*
 * The hardware pointer: frames captured since the current start. A reader a whole buffer behind
 * it is an overrun, which stays until the next prepare (the stream is stopped).
 */
static int64_t hw_position(testcard_t *card)
{
	int64_t hw;

	if (!card->running)
		return 0;
	hw = line_position(card, now_ns()) - card->base;
	if (hw - (int64_t)card->io.appl_ptr >= (int64_t)card->io.buffer_size)
		card->overrun = 1;
	return hw;
}

static int testcard_start(snd_pcm_ioplug_t *io)
{
	testcard_t *card = io->private_data;
	int64_t t = now_ns();
	int64_t period = ((int64_t)io->period_size * 1000000000 + io->rate - 1) / io->rate;
	struct itimerspec tick = {
		.it_interval = { period / 1000000000, period % 1000000000 },
		.it_value = { (t + period) / 1000000000, (t + period) % 1000000000 },
	};

	if (card->line_t0 == 0)
		card->line_t0 = t;
	card->base = line_position(card, t);
	card->overrun = 0;
	card->running = 1;
	/* One tick per period: the first when the first period is complete. */
	if (timerfd_settime(io->poll_fd, TFD_TIMER_ABSTIME, &tick, NULL) < 0)
		return -errno;
	return 0;
}

static int testcard_stop(snd_pcm_ioplug_t *io)
{
	testcard_t *card = io->private_data;
	struct itimerspec off = { { 0, 0 }, { 0, 0 } };

	card->running = 0;
	timerfd_settime(io->poll_fd, 0, &off, NULL);
	return 0;
}

static int testcard_prepare(snd_pcm_ioplug_t *io)
{
	testcard_t *card = io->private_data;

	testcard_stop(io);
	card->overrun = 0;
	return 0;
}

static snd_pcm_sframes_t testcard_pointer(snd_pcm_ioplug_t *io)
{
	testcard_t *card = io->private_data;
	int64_t hw = hw_position(card);

	if (card->overrun)
		return -EPIPE;
	return hw % io->buffer_size;
}

/* The application reads `size` frames: the line's samples at the card's read position. */
static snd_pcm_sframes_t testcard_transfer(snd_pcm_ioplug_t *io, const snd_pcm_channel_area_t *areas,
					   snd_pcm_uframes_t offset, snd_pcm_uframes_t size)
{
	testcard_t *card = io->private_data;
	size_t frame_bytes = io->channels * 2;
	char *dst = (char *)areas[0].addr + (areas[0].first + offset * areas[0].step) / 8;
	size_t want = size * frame_bytes, got = 0;
	off_t at = (off_t)(card->base + (int64_t)io->appl_ptr) * frame_bytes;

	while (got < want) {
		ssize_t n = pread(card->infile, dst + got, want - got, at + got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		got += n;
	}
	memset(dst + got, 0, want - got);	/* past the end of the file: silence */
	return size;
}

static int testcard_sw_params(snd_pcm_ioplug_t *io, snd_pcm_sw_params_t *params)
{
	testcard_t *card = io->private_data;

	return snd_pcm_sw_params_get_avail_min(params, &card->avail_min);
}

/* Woken by the period tick: readable once avail_min frames wait (or an overrun does). */
static int testcard_poll_revents(snd_pcm_ioplug_t *io, struct pollfd *pfds, unsigned int nfds,
				 unsigned short *revents)
{
	testcard_t *card = io->private_data;
	uint64_t ticks;
	snd_pcm_uframes_t min = card->avail_min ? card->avail_min : io->period_size;

	if (nfds != 1)
		return -EINVAL;
	while (read(pfds[0].fd, &ticks, sizeof(ticks)) > 0)
		;	/* the timerfd is non-blocking: drain it */
	*revents = pfds[0].revents & ~POLLIN;
	if (hw_position(card) - (int64_t)io->appl_ptr >= (int64_t)min || card->overrun)
		*revents |= POLLIN;	/* an overrun too: the read then learns of it from the pointer */
	return 0;
}

static int testcard_close(snd_pcm_ioplug_t *io)
{
	testcard_t *card = io->private_data;

	close(io->poll_fd);
	close(card->infile);
	free(card);
	return 0;
}

static const snd_pcm_ioplug_callback_t testcard_callback = {
	.start = testcard_start,
	.stop = testcard_stop,
	.prepare = testcard_prepare,
	.pointer = testcard_pointer,
	.transfer = testcard_transfer,
	.sw_params = testcard_sw_params,
	.poll_revents = testcard_poll_revents,
	.close = testcard_close,
};

static int set_constraints(snd_pcm_ioplug_t *io)
{
	static const unsigned int access[] = { SND_PCM_ACCESS_RW_INTERLEAVED };
	static const unsigned int format[] = { SND_PCM_FORMAT_S16_LE };
	int err;

	if ((err = snd_pcm_ioplug_set_param_list(io, SND_PCM_IOPLUG_HW_ACCESS, 1, access)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_list(io, SND_PCM_IOPLUG_HW_FORMAT, 1, format)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_minmax(io, SND_PCM_IOPLUG_HW_CHANNELS, 1, 8)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_minmax(io, SND_PCM_IOPLUG_HW_RATE, 4000, 192000)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_minmax(io, SND_PCM_IOPLUG_HW_PERIOD_BYTES, 16, 1 << 20)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_minmax(io, SND_PCM_IOPLUG_HW_PERIODS, 2, 1024)) < 0 ||
	    (err = snd_pcm_ioplug_set_param_minmax(io, SND_PCM_IOPLUG_HW_BUFFER_BYTES, 32, 1 << 24)) < 0)
		return err;
	return 0;
}

SND_PCM_PLUGIN_DEFINE_FUNC(testcard)
{
	snd_config_iterator_t i, next;
	const char *infile = NULL;
	testcard_t *card;
	int err;

	snd_config_for_each(i, next, conf) {
		snd_config_t *n = snd_config_iterator_entry(i);
		const char *id;

		if (snd_config_get_id(n, &id) < 0)
			continue;
		if (!strcmp(id, "comment") || !strcmp(id, "type") || !strcmp(id, "hint"))
			continue;
		if (!strcmp(id, "infile")) {
			if (snd_config_get_string(n, &infile) < 0) {
				SNDERR("testcard: infile must be a string");
				return -EINVAL;
			}
			continue;
		}
		SNDERR("testcard: unknown field %s", id);
		return -EINVAL;
	}
	if (!infile) {
		SNDERR("testcard: infile is not set");
		return -EINVAL;
	}
	if (stream != SND_PCM_STREAM_CAPTURE) {
		SNDERR("testcard: %s is a capture-only card", name);
		return -EINVAL;
	}

	card = calloc(1, sizeof(*card));
	if (!card)
		return -ENOMEM;
	card->infile = open(infile, O_RDONLY | O_CLOEXEC);
	if (card->infile < 0) {
		err = -errno;
		SNDERR("testcard: cannot open %s", infile);
		free(card);
		return err;
	}
	card->io.version = SND_PCM_IOPLUG_VERSION;
	card->io.name = "Simulated capture card (testcard)";
	card->io.flags = SND_PCM_IOPLUG_FLAG_MONOTONIC;
	card->io.callback = &testcard_callback;
	card->io.private_data = card;
	card->io.poll_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
	card->io.poll_events = POLLIN;
	if (card->io.poll_fd < 0) {
		err = -errno;
		close(card->infile);
		free(card);
		return err;
	}

	err = snd_pcm_ioplug_create(&card->io, name, stream, mode);
	if (err < 0) {
		close(card->io.poll_fd);
		close(card->infile);
		free(card);
		return err;
	}
	err = set_constraints(&card->io);
	if (err < 0) {
		snd_pcm_ioplug_delete(&card->io);	/* calls close */
		return err;
	}
	*pcmp = card->io.pcm;
	return 0;
}

SND_PCM_PLUGIN_SYMBOL(testcard);
