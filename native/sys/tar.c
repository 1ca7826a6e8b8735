/*
 * tar.c: tar member headers (pax over ustar) for native capture, the same
 * bytes src/format/tar.ts writes (test/native-capture.test.ts compares the
 * two tar streams of one tree): pax records carry long or non-ASCII names,
 * sizes past 8 GiB, nanosecond or negative mtimes, large ids and xattrs
 * (SCHILY.xattr.*). Sparse files and overlay markers are left to tar.ts.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sys.h"

#define TAR_BLOCK 512

bool sbuf_reserve(struct sbuf *b, size_t more)
{
	size_t want = b->len + more, cap = b->cap ? b->cap : 256;
	uint8_t *p;

	if (want <= b->cap)
		return true;
	while (cap < want)
		cap *= 2;
	p = realloc(b->p, cap);
	if (p == NULL)
		return false;
	b->p = p;
	b->cap = cap;
	return true;
}

bool sbuf_put(struct sbuf *b, const void *data, size_t len)
{
	if (!sbuf_reserve(b, len))
		return false;
	if (len > 0)
		memcpy(b->p + b->len, data, len);
	b->len += len;
	return true;
}

bool sbuf_zeros(struct sbuf *b, size_t len)
{
	if (!sbuf_reserve(b, len))
		return false;
	memset(b->p + b->len, 0, len);
	b->len += len;
	return true;
}

void sbuf_free(struct sbuf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

size_t tar_pad(uint64_t n)
{
	return (size_t)((TAR_BLOCK - n % TAR_BLOCK) % TAR_BLOCK);
}

/* width includes the NUL; a value that does not fit is clamped (pax has it). */
static void octal(uint8_t *h, size_t off, size_t width, int64_t value)
{
	uint64_t max = 1, v;
	size_t i;

	for (i = 0; i < width - 1; i++)
		max *= 8;
	max -= 1;
	v = value < 0 ? 0 : (uint64_t)value > max ? max : (uint64_t)value;
	for (i = width - 1; i-- > 0;) {
		h[off + i] = (uint8_t)('0' + (v & 7));
		v >>= 3;
	}
	h[off + width - 1] = 0;
}

static bool needs_pax(const char *p, size_t len, size_t width)
{
	size_t i;

	if (len > width)
		return true;
	for (i = 0; i < len; i++)
		if ((unsigned char)p[i] >= 0x80)
			return true;
	return false;
}

static void ustar(uint8_t *h, const char *name, size_t name_len, char type,
		  uint32_t mode, uint64_t uid, uint64_t gid, uint64_t size,
		  int64_t mtime, const char *link, size_t link_len,
		  uint32_t dev_major, uint32_t dev_minor)
{
	unsigned int sum = 0;
	char ck[8];
	size_t i;

	memset(h, 0, TAR_BLOCK);
	memcpy(h, name, name_len < 100 ? name_len : 100);
	octal(h, 100, 8, mode);
	octal(h, 108, 8, (int64_t)(uid > INT64_MAX ? INT64_MAX : uid));
	octal(h, 116, 8, (int64_t)(gid > INT64_MAX ? INT64_MAX : gid));
	octal(h, 124, 12, (int64_t)(size > INT64_MAX ? INT64_MAX : size));
	octal(h, 136, 12, mtime);
	memset(h + 148, ' ', 8);
	h[156] = (uint8_t)type;
	if (link != NULL)
		memcpy(h + 157, link, link_len < 100 ? link_len : 100);
	memcpy(h + 257, "ustar\0" "00", 8);
	octal(h, 329, 8, dev_major);
	octal(h, 337, 8, dev_minor);
	for (i = 0; i < TAR_BLOCK; i++)
		sum += h[i];
	snprintf(ck, sizeof(ck), "%06o", sum & 0777777);
	memcpy(h + 148, ck, 6);
	h[154] = 0;
	h[155] = ' ';
}

/* "<len> key=value\n", the length counting itself. */
static bool pax_record(struct sbuf *b, const char *key, const void *val,
		       size_t val_len)
{
	size_t body = 1 + strlen(key) + 1 + val_len + 1, len = body + 1;
	char num[24];
	int n;

	for (;;) {
		n = snprintf(num, sizeof(num), "%zu", len);
		if ((size_t)n + body == len)
			break;
		len = (size_t)n + body;
	}
	return sbuf_put(b, num, (size_t)n) && sbuf_put(b, " ", 1) &&
	       sbuf_put(b, key, strlen(key)) && sbuf_put(b, "=", 1) &&
	       sbuf_put(b, val, val_len) && sbuf_put(b, "\n", 1);
}

bool tar_member(struct sbuf *out, const struct tar_member *m)
{
	struct sbuf pax = { 0 };
	uint8_t h[TAR_BLOCK];
	char num[48];
	bool ok = true;
	size_t i;

	if (needs_pax(m->name, m->name_len, 100))
		ok = ok && pax_record(&pax, "path", m->name, m->name_len);
	if (m->link != NULL && needs_pax(m->link, m->link_len, 100))
		ok = ok && pax_record(&pax, "linkpath", m->link, m->link_len);
	if (m->size > 077777777777ULL) {
		snprintf(num, sizeof(num), "%llu", (unsigned long long)m->size);
		ok = ok && pax_record(&pax, "size", num, strlen(num));
	}
	if (m->uid > 07777777ULL) {
		snprintf(num, sizeof(num), "%llu", (unsigned long long)m->uid);
		ok = ok && pax_record(&pax, "uid", num, strlen(num));
	}
	if (m->gid > 07777777ULL) {
		snprintf(num, sizeof(num), "%llu", (unsigned long long)m->gid);
		ok = ok && pax_record(&pax, "gid", num, strlen(num));
	}
	if (m->mtime_nsec != 0 || m->mtime_sec < 0 ||
	    m->mtime_sec > 077777777777LL) {
		/* A decimal with the fraction; below zero the fraction still counts up. */
		bool neg = m->mtime_sec < 0 && m->mtime_nsec > 0;
		long long whole = neg ? m->mtime_sec + 1 : m->mtime_sec;
		long frac = neg ? 1000000000L - m->mtime_nsec : m->mtime_nsec;
		int n = snprintf(num, sizeof(num), "%s%lld", neg && whole == 0 ? "-" : "", whole);

		if (frac != 0)
			snprintf(num + n, sizeof(num) - (size_t)n, ".%09ld", frac);
		ok = ok && pax_record(&pax, "mtime", num, strlen(num));
	}
	for (i = 0; ok && i < m->nxattrs; i++) {
		size_t kl = strlen(m->xnames[i]);
		char *key = malloc(13 + kl + 1);

		if (key == NULL) {
			ok = false;
			break;
		}
		memcpy(key, "SCHILY.xattr.", 13);
		memcpy(key + 13, m->xnames[i], kl + 1);
		ok = pax_record(&pax, key, m->xvals[i], m->xlens[i]);
		free(key);
	}
	if (ok && pax.len > 0) {
		/* 'PaxHeaders/' + the name's last component, cut to 99 bytes. */
		const char *base = m->name + m->name_len;
		char xname[100];
		size_t bl;

		while (base > m->name && base[-1] != '/')
			base--;
		bl = (size_t)(m->name + m->name_len - base);
		memcpy(xname, "PaxHeaders/", 11);
		if (bl > 99 - 11)
			bl = 99 - 11;
		memcpy(xname + 11, base, bl);
		ustar(h, xname, 11 + bl, 'x', 0644, 0, 0, pax.len,
		      m->mtime_sec > 0 ? m->mtime_sec : 0, NULL, 0, 0, 0);
		ok = sbuf_put(out, h, TAR_BLOCK) && sbuf_put(out, pax.p, pax.len) &&
		     sbuf_zeros(out, tar_pad(pax.len));
	}
	sbuf_free(&pax);
	if (!ok)
		return false;
	ustar(h, m->name, m->name_len, m->type, m->mode, m->uid, m->gid, m->size,
	      m->mtime_sec, m->link, m->link_len, m->dev_major, m->dev_minor);
	return sbuf_put(out, h, TAR_BLOCK);
}
