package proxy

import (
	"net/http"
	"sync"

	apirequest "k8s.io/apiserver/pkg/endpoints/request"
)

// requestInfoCacheSize bounds a requestInfoCache; full, it starts again
// empty.
const requestInfoCacheSize = 4096

// requestInfoCache remembers the RequestInfo of the requests it has seen by
// method, path and query, which are all RequestInfoFactory reads. Building
// one splits the path and, for a collection GET, decodes the query into
// ListOptions to tell a list from a watch: 7 allocations and more time than
// any other filter takes, for what clients send again and again (the same
// LISTs, the same GETs). Errors are not cached. The RequestInfos it returns
// are shared between requests and must not be modified.
type requestInfoCache struct {
	mu sync.RWMutex
	m  map[requestInfoKey]*apirequest.RequestInfo
}

type requestInfoKey struct{ method, path, query string }

func newRequestInfoCache() *requestInfoCache {
	return &requestInfoCache{m: map[requestInfoKey]*apirequest.RequestInfo{}}
}

// get returns r's RequestInfo, from the cache or made (and kept) now.
func (c *requestInfoCache) get(r *http.Request) (*apirequest.RequestInfo, error) {
	k := requestInfoKey{method: r.Method, path: r.URL.Path, query: r.URL.RawQuery}
	c.mu.RLock()
	info, ok := c.m[k]
	c.mu.RUnlock()
	if ok {
		return info, nil
	}
	info, err := requestInfoFactory.NewRequestInfo(r)
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if len(c.m) >= requestInfoCacheSize {
		clear(c.m)
	}
	c.m[k] = info
	c.mu.Unlock()
	return info, nil
}
