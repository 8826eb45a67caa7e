/* SPDX-License-Identifier: MIT */
#include <curl/curl.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "etcd-http.h"
#include "macro.h"

struct EtcdHttpRequest {
        EtcdHttp *http;
        EtcdHttpRequest *prev, *next;
        CURL *easy;
        struct curl_slist *headers;
        char *path;
        char *body;
        char *url;
        EtcdHttpPost post;              /* path and body point at the copies above */
        size_t endpoint;                /* index in use */
        size_t tries;                   /* endpoints tried */
        usec_t deadline;                /* CLOCK_MONOTONIC; USEC_INFINITY = none */
        char *buf;                      /* response bytes not yet handed out */
        size_t len, cap;
        bool sent_bytes;                /* response bytes arrived: it reached etcd */
        bool pending_start;             /* posted from inside curl: added when it returns */
        bool cancelled;
};

typedef struct SocketWatch {
        ev_io io;
        EtcdHttp *http;
        curl_socket_t fd;
} SocketWatch;

struct EtcdHttp {
        struct ev_loop *loop;
        CURLM *multi;
        ev_timer timer;
        char **endpoints;
        size_t n_endpoints;
        size_t current;
        char *ca_file, *cert_file, *key_file;
        usec_t connect_timeout;
        EtcdHttpRequest *requests;
        unsigned dispatching;           /* > 0 inside curl_multi_socket_action() */
};

static void request_free(EtcdHttpRequest *r) {
        EtcdHttp *h = r->http;
        if (r->prev)
                r->prev->next = r->next;
        else if (h->requests == r)
                h->requests = r->next;
        if (r->next)
                r->next->prev = r->prev;
        if (r->easy) {
                curl_multi_remove_handle(h->multi, r->easy);
                curl_easy_cleanup(r->easy);
        }
        curl_slist_free_all(r->headers);
        free(r->path);
        free(r->body);
        free(r->url);
        free(r->buf);
        free(r);
}

static void done(EtcdHttpRequest *r, int error, long status) {
        if (!r->buf || r->len == r->cap) {
                char *t = realloc(r->buf, r->len + 1);
                if (t) {
                        r->buf = t;
                        r->cap = r->len + 1;
                }
        }
        if (r->buf)
                r->buf[r->len] = 0;
        EtcdHttpPost p = r->post;
        size_t len = r->buf ? r->len : 0;
        const char *endpoint = r->http->endpoints[r->endpoint];
        /* Unlink first: the callback may post new requests or cancel others. */
        _cleanup_free_ char *keep = TAKE_PTR(r->buf);
        request_free(r);
        p.on_done(error, status, keep ?: "", len, endpoint, p.userdata);
}

/* Hands out the complete lines of a streamed body. Returns false if the request was
 * cancelled by a callback. */
static bool deliver_lines(EtcdHttpRequest *r) {
        size_t start = 0;
        for (size_t i = 0; i < r->len; i++) {
                if (r->buf[i] != '\n')
                        continue;
                r->buf[i] = 0;
                if (i > start)
                        r->post.on_line(r, r->buf + start, i - start, r->post.userdata);
                start = i + 1;
                if (r->cancelled)
                        return false;
        }
        memmove(r->buf, r->buf + start, r->len - start);
        r->len -= start;
        return true;
}

static size_t write_cb(char *data, size_t size, size_t nmemb, void *userdata) {
        EtcdHttpRequest *r = userdata;
        size_t n = size * nmemb;
        if (r->cancelled)
                return 0;
        r->sent_bytes = true;
        if (r->len + n + 1 > r->cap) {
                size_t cap = MAX(r->cap * 2, r->len + n + 1);
                char *t = realloc(r->buf, cap);
                if (!t)
                        return 0;
                r->buf = t;
                r->cap = cap;
        }
        memcpy(r->buf + r->len, data, n);
        r->len += n;
        if (r->post.on_line && !deliver_lines(r))
                return 0;
        return n;
}

static int request_start(EtcdHttpRequest *r);

static int curl_to_errno(CURLcode c) {
        switch (c) {
        case CURLE_OK:
                return 0;
        case CURLE_COULDNT_CONNECT:
        case CURLE_COULDNT_RESOLVE_HOST:
                return -ECONNREFUSED;
        case CURLE_OPERATION_TIMEDOUT:
                return -ETIMEDOUT;
        case CURLE_OUT_OF_MEMORY:
                return -ENOMEM;
        case CURLE_SSL_CONNECT_ERROR:
        case CURLE_PEER_FAILED_VERIFICATION:
        case CURLE_SSL_CERTPROBLEM:
        case CURLE_SSL_CIPHER:
        case CURLE_SSL_CACERT_BADFILE:
                return -EPROTO;
        case CURLE_GOT_NOTHING:
        case CURLE_RECV_ERROR:
        case CURLE_SEND_ERROR:
                return -ECONNRESET;
        default:
                return -EIO;
        }
}

static void finished(EtcdHttpRequest *r, CURLcode code) {
        EtcdHttp *h = r->http;
        if (r->cancelled) {
                request_free(r);
                return;
        }
        long status = 0;
        curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
        int error = curl_to_errno(code);
        /* Not reached (connect failed), or reached but safe to repeat: the next endpoint,
         * each at most once, within the request's own deadline. */
        bool unreached = code == CURLE_COULDNT_CONNECT || code == CURLE_COULDNT_RESOLVE_HOST ||
                         (code == CURLE_OPERATION_TIMEDOUT && !r->sent_bytes && status == 0);
        /* 503/504: the member has no leader or timed out waiting for one; another member
         * may be on the majority's side. */
        bool member_unwell = error == 0 && (status == 503 || status == 504);
        if ((error < 0 || member_unwell) && (unreached || r->post.idempotent) && r->tries < h->n_endpoints &&
            (r->deadline == USEC_INFINITY || usec_now(CLOCK_MONOTONIC) < r->deadline)) {
                if (h->current == r->endpoint && !r->post.pin_endpoint)
                        h->current = (h->current + 1) % h->n_endpoints;
                r->endpoint = (r->endpoint + 1) % h->n_endpoints;
                curl_multi_remove_handle(h->multi, r->easy);
                curl_easy_cleanup(r->easy);
                r->easy = NULL;
                r->len = 0;
                r->sent_bytes = false;
                if (request_start(r) >= 0)
                        return;
        }
        if ((error < 0 || member_unwell) && h->current == r->endpoint && h->n_endpoints > 1 &&
            !r->post.pin_endpoint)
                h->current = (h->current + 1) % h->n_endpoints;
        done(r, error, status);
}

static void check_finished(EtcdHttp *h) {
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(h->multi, &left))) {
                if (m->msg != CURLMSG_DONE)
                        continue;
                EtcdHttpRequest *r = NULL;
                curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **) &r);
                finished(r, m->data.result);
        }
}

static void socket_action(EtcdHttp *h, curl_socket_t fd, int events) {
        int running;
        h->dispatching++;
        curl_multi_socket_action(h->multi, fd, events, &running);
        h->dispatching--;
        /* Requests cancelled from a callback while curl ran, whose transfer would not end
         * by itself (an idle stream). */
        for (EtcdHttpRequest *r = h->requests, *n; r; r = n) {
                n = r->next;
                if (r->cancelled)
                        request_free(r);
        }
        check_finished(h);
        /* Posted from inside curl. A failure to start is reported like any other, from
         * here, outside the call that posted it. */
        for (bool again = true; again;) {
                again = false;
                for (EtcdHttpRequest *r = h->requests; r; r = r->next) {
                        if (!r->pending_start)
                                continue;
                        r->pending_start = false;
                        if (request_start(r) < 0) {
                                done(r, -ENOMEM, 0);
                                again = true;   /* the callback may have changed the list */
                                break;
                        }
                }
        }
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents) {
        SocketWatch *s = container_of(w, SocketWatch, io);
        int events = (revents & EV_READ ? CURL_CSELECT_IN : 0) | (revents & EV_WRITE ? CURL_CSELECT_OUT : 0);
        socket_action(s->http, s->fd, events);
}

static void timer_cb(struct ev_loop *loop, ev_timer *w, int revents) {
        EtcdHttp *h = container_of(w, EtcdHttp, timer);
        socket_action(h, CURL_SOCKET_TIMEOUT, 0);
}

static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp) {
        EtcdHttp *h = userp;
        SocketWatch *s = socketp;
        if (what == CURL_POLL_REMOVE) {
                if (s) {
                        ev_io_stop(h->loop, &s->io);
                        curl_multi_assign(h->multi, fd, NULL);
                        free(s);
                }
                return 0;
        }
        if (!s) {
                s = calloc(1, sizeof(*s));
                if (!s)
                        return -1;
                s->http = h;
                s->fd = fd;
                curl_multi_assign(h->multi, fd, s);
        } else
                ev_io_stop(h->loop, &s->io);
        ev_io_init(&s->io, io_cb, fd, (what & CURL_POLL_IN ? EV_READ : 0) | (what & CURL_POLL_OUT ? EV_WRITE : 0));
        ev_io_start(h->loop, &s->io);
        return 0;
}

static int timerfunction_cb(CURLM *multi, long timeout_ms, void *userp) {
        EtcdHttp *h = userp;
        ev_timer_stop(h->loop, &h->timer);
        if (timeout_ms >= 0) {
                /* 0 means "at once", but never from inside this callback: the loop's next turn. */
                ev_timer_set(&h->timer, timeout_ms / 1000.0, 0.);
                ev_timer_start(h->loop, &h->timer);
        }
        return 0;
}

int etcd_http_new(struct ev_loop *loop, const EtcdHttpOptions *o, EtcdHttp **ret) {
        static bool global_done;
        if (o->n_endpoints == 0)
                return -EINVAL;
        if (!global_done) {
                if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
                        return -EIO;
                global_done = true;
        }
        EtcdHttp *h = calloc(1, sizeof(*h));
        if (!h)
                return -ENOMEM;
        h->loop = loop;
        h->connect_timeout = o->connect_timeout ?: 2 * USEC_PER_SEC;
        ev_timer_init(&h->timer, timer_cb, 0., 0.);
        h->endpoints = calloc(o->n_endpoints, sizeof(char *));
        if (!h->endpoints)
                goto oom;
        for (size_t i = 0; i < o->n_endpoints; i++) {
                size_t l = strlen(o->endpoints[i]);
                while (l > 0 && o->endpoints[i][l - 1] == '/')
                        l--;
                if (!(h->endpoints[i] = strndup(o->endpoints[i], l)))
                        goto oom;
                h->n_endpoints++;
        }
        if ((o->ca_file && !(h->ca_file = strdup(o->ca_file))) ||
            (o->cert_file && !(h->cert_file = strdup(o->cert_file))) ||
            (o->key_file && !(h->key_file = strdup(o->key_file))))
                goto oom;
        h->multi = curl_multi_init();
        if (!h->multi)
                goto oom;
        curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
        curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
        curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, timerfunction_cb);
        curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
        *ret = h;
        return 0;
oom:
        etcd_http_free(h);
        return -ENOMEM;
}

EtcdHttp *etcd_http_free(EtcdHttp *h) {
        if (!h)
                return NULL;
        assert(h->dispatching == 0);
        while (h->requests) {
                EtcdHttpRequest *r = h->requests;
                if (r->cancelled)
                        request_free(r);
                else
                        done(r, -ECANCELED, 0);
        }
        ev_timer_stop(h->loop, &h->timer);
        if (h->multi)
                curl_multi_cleanup(h->multi);   /* closes sockets through socket_cb */
        for (size_t i = 0; i < h->n_endpoints; i++)
                free(h->endpoints[i]);
        free(h->endpoints);
        free(h->ca_file);
        free(h->cert_file);
        free(h->key_file);
        free(h);
        return NULL;
}

static int request_start(EtcdHttpRequest *r) {
        EtcdHttp *h = r->http;
        /* curl refuses curl_multi_add_handle() from its own callbacks (a stream's line
         * callback posting the next call): the handle is added once curl has returned. */
        if (h->dispatching > 0) {
                r->pending_start = true;
                return 0;
        }
        r->tries++;
        free(r->url);
        if (asprintf(&r->url, "%s%s", h->endpoints[r->endpoint], r->path) < 0) {
                r->url = NULL;
                return -ENOMEM;
        }
        CURL *e = curl_easy_init();
        if (!e)
                return -ENOMEM;
        curl_easy_setopt(e, CURLOPT_URL, r->url);
        curl_easy_setopt(e, CURLOPT_PRIVATE, r);
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, r->body);
        curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long) strlen(r->body));
        curl_easy_setopt(e, CURLOPT_HTTPHEADER, r->headers);
        curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
        curl_easy_setopt(e, CURLOPT_WRITEDATA, r);
        curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
        curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
        curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long) (h->connect_timeout / USEC_PER_MSEC));
        if (r->deadline != USEC_INFINITY) {
                usec_t now = usec_now(CLOCK_MONOTONIC);
                long ms = r->deadline > now ? (long) ((r->deadline - now + 999) / USEC_PER_MSEC) : 1;
                curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, ms);
        }
        if (h->ca_file)
                curl_easy_setopt(e, CURLOPT_CAINFO, h->ca_file);
        if (h->cert_file)
                curl_easy_setopt(e, CURLOPT_SSLCERT, h->cert_file);
        if (h->key_file)
                curl_easy_setopt(e, CURLOPT_SSLKEY, h->key_file);
        r->easy = e;
        if (curl_multi_add_handle(h->multi, e) != CURLM_OK) {
                curl_easy_cleanup(e);
                r->easy = NULL;
                return -ENOMEM;
        }
        return 0;
}

int etcd_http_post(EtcdHttp *h, const EtcdHttpPost *p, EtcdHttpRequest **ret) {
        assert(p->on_done);
        EtcdHttpRequest *r = calloc(1, sizeof(*r));
        if (!r)
                return -ENOMEM;
        r->http = h;
        r->next = h->requests;
        if (h->requests)
                h->requests->prev = r;
        h->requests = r;
        r->post = *p;
        r->endpoint = h->current;
        if (p->pin_endpoint) {
                if (p->endpoint >= h->n_endpoints) {
                        request_free(r);
                        return -EINVAL;
                }
                r->endpoint = p->endpoint;
                r->tries = h->n_endpoints - 1;  /* the one try it gets */
        }
        r->deadline = p->timeout ? usec_now(CLOCK_MONOTONIC) + p->timeout : USEC_INFINITY;
        struct curl_slist *l;
        /* No "Expect: 100-continue" round trip before a body over 1 KiB. */
        if (!(r->path = strdup(p->path)) || !(r->body = strdup(p->body)) ||
            !(l = curl_slist_append(NULL, "Content-Type: application/json")) || !((r->headers = l)) ||
            !(l = curl_slist_append(r->headers, "Expect:")) ||
            (p->require_leader && !(l = curl_slist_append(r->headers, "Grpc-Metadata-hasleader: true")))) {
                request_free(r);
                return -ENOMEM;
        }
        r->post.path = r->path;
        r->post.body = r->body;
        int k = request_start(r);
        if (k < 0) {
                request_free(r);
                return k;
        }
        if (ret)
                *ret = r;
        return 0;
}

void etcd_http_cancel(EtcdHttpRequest *r) {
        if (!r)
                return;
        /* Inside curl's own callbacks a handle must not be removed: write_cb sees the flag
         * and aborts the transfer, and finished() frees it silently. */
        if (r->http->dispatching > 0) {
                r->cancelled = true;
                return;
        }
        request_free(r);
}

const char *etcd_http_request_endpoint(const EtcdHttpRequest *r) {
        return r->http->endpoints[r->endpoint];
}

const char *etcd_http_current_endpoint(const EtcdHttp *h) {
        return h->endpoints[h->current];
}
