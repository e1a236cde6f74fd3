# roomd tasks. `just --list` shows them all.
set shell := ["bash", "-uc"]

venv := ".venv"
bin := venv + "/bin"

# Create .venv and install roomd with its development tools.
setup:
    test -d {{venv}} || python3 -m venv {{venv}}
    {{bin}}/python -m pip install --quiet --upgrade pip
    {{bin}}/python -m pip install --quiet -e '.[dev]'

# The web side's test tools: TypeScript in tests/js (Chromium comes from `apt-get install chromium`).
setup-web:
    cd tests/js && npm ci --no-audit --no-fund

# Format the web side's sources with Prettier (after setup-web).
fmt-web:
    tests/js/node_modules/.bin/prettier --write "roomd/web/**/*.{js,ts,css,html,json}" "tests/js/*.{mjs,ts,json}"

# Run the test suite (extra arguments go to pytest).
test *args:
    {{bin}}/python -m pytest -q {{args}}

# ruff, mypy and the import contracts (the layers of docs/architecture.md).
lint:
    {{bin}}/ruff check roomd broker tests
    {{bin}}/ruff format --check roomd broker tests
    {{bin}}/mypy
    {{bin}}/lint-imports

# Format the code.
fmt:
    {{bin}}/ruff format roomd broker tests
    {{bin}}/ruff check --fix roomd broker tests

# Run one node in development mode (accepts ?user=NAME without a token).
serve name="serverA" port="9000":
    {{bin}}/roomd --name {{name}} --port {{port}} --dev

# A broker and five nodes (serverA..serverE on ports 9000-9004), in one terminal; Ctrl-C stops all.
cluster:
    {{bin}}/roomd cluster --config conf/cluster.toml

# The same five nodes as a broker-less mesh.
mesh:
    {{bin}}/roomd cluster --config conf/mesh.toml

# Benchmark: a broker and five nodes; WebSocket workloads W1-W3 and the raw bus (see docs/performance.md).
bench *args:
    {{bin}}/roomd bench {{args}}
