"""A long run of one service (session 51): N requests of the Lego test photographs, one in ten an
unreadable upload, one in ten a batch of three, listings, CSV and /metrics between them; the
service's resident memory, open files and threads every 100 requests.

    RPEPAD_DATA_DIR=/tmp/soak/data RPEPAD_BUNDLES=BUNDLES rpe-pad serve --port 8765 &
    python docs/results/soak_session51.py PID N [CATEGORY_DIR (default ../shared/data/Lego)]
"""
import glob, os, random, sys, time
import httpx
pid = int(sys.argv[1]); n = int(sys.argv[2])
root = sys.argv[3] if len(sys.argv) > 3 else '../shared/data/Lego'
files = sorted(glob.glob(f'{root}/test/*/*.png'))
random.seed(0)
def stats():
    rss = int(open(f'/proc/{pid}/status').read().split('VmRSS:')[1].split()[0]) // 1024
    fds = len(os.listdir(f'/proc/{pid}/fd'))
    thr = len(os.listdir(f'/proc/{pid}/task'))
    return rss, fds, thr
c = httpx.Client(base_url='http://127.0.0.1:8765', timeout=60)
codes = {}
t0 = time.time()
print('start', stats(), flush=True)
for i in range(n):
    f = random.choice(files)
    kind = i % 10
    if kind == 7:
        r = c.post('/inspect', files={'file': ('x.png', b'not an image', 'image/png')}, data={'category': 'Lego'})
    elif kind == 8:
        r = c.post('/inspect/batch', files=[('files', (os.path.basename(f), open(f,'rb').read(), 'image/png')) for f in random.sample(files, 3)], data={'category': 'Lego', 'include_overlay': 'true'})
    else:
        r = c.post('/inspect', files={'file': (os.path.basename(f), open(f,'rb').read(), 'image/png')}, data={'category': 'Lego', 'include_map': 'true', 'include_overlay': str(kind % 2 == 0).lower()})
    codes[r.status_code] = codes.get(r.status_code, 0) + 1
    if kind == 9:
        c.get('/inspections', params={'limit': 50}); c.get('/inspections.csv'); c.get('/metrics')
    if (i + 1) % 100 == 0:
        print(i + 1, round(time.time() - t0, 1), stats(), codes, flush=True)
