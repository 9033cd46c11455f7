/** How the client reads the feed: HTTP(S) GETs, a body read chunk by chunk. */
export interface Response {
  status: number;
  /** The body in chunks; stop reading (`return()`) to abandon the rest. */
  body: AsyncIterable<Uint8Array>;
}

export interface Transport {
  get(url: string): Promise<Response>;
}

/** `fetch` with a streaming body (Node 18+, browsers; React Native: see docs/phone-app.md). */
export const fetchTransport = (timeoutMs = 30000): Transport => ({
  async get(url: string): Promise<Response> {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    const res = await fetch(url, { signal: controller.signal });
    async function* chunks(): AsyncGenerator<Uint8Array> {
      try {
        if (res.body) {
          const reader = res.body.getReader();
          try {
            for (;;) {
              const { done, value } = await reader.read();
              if (done) return;
              yield value;
            }
          } finally {
            await reader.cancel().catch(() => undefined);
          }
        } else {
          yield new Uint8Array(await res.arrayBuffer());
        }
      } finally {
        clearTimeout(timer);
      }
    }
    return { status: res.status, body: chunks() };
  },
});
