# Sourced by scripts that run madre against vx11-stubs started with
# --port-offset OFFSET: prints the VX11_<MODULE>_URL assignments for env(1).
vx11_stub_urls() {
    local offset=$1
    echo "VX11_TENTACULO_LINK_URL=http://127.0.0.1:$((8000 + offset))"
    echo "VX11_SWITCH_URL=http://127.0.0.1:$((8002 + offset))"
    echo "VX11_HERMES_URL=http://127.0.0.1:$((8003 + offset))"
    echo "VX11_HORMIGUERO_URL=http://127.0.0.1:$((8004 + offset))"
    echo "VX11_MANIFESTATOR_URL=http://127.0.0.1:$((8005 + offset))"
    echo "VX11_MCP_URL=http://127.0.0.1:$((8006 + offset))"
    echo "VX11_SHUB_URL=http://127.0.0.1:$((8007 + offset))"
    echo "VX11_SPAWNER_URL=http://127.0.0.1:$((8008 + offset))"
}
