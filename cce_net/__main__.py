from cce_net.cli import app

app(prog_name="cce-net")
