# moongate container image (docs/deploy.md).
#
#   docker build -t moongate:0.1.0 .
#   docker run --rm -p 8080:8080 -p 9901:9901 moongate:0.1.0                  # the mock provider
#   docker run --rm -p 8080:8080 -p 9901:9901 -e OPENAI_API_KEY=sk-... moongate:0.1.0
#   docker run --rm -v $PWD/gateway.lua:/etc/moongate/gateway.lua:ro -v moongate-data:/var/lib/moongate \
#     -p 8080:8080 -p 9901:9901 moongate:0.1.0
#
# Two stages on Debian 12: the build stage has the -dev packages and cmake; the runtime stage only
# the shared libraries the binary links and loads (LuaJIT, libuv, libcurl, mbed TLS, PCRE2), CA
# certificates for the providers' TLS, and curl for the HEALTHCHECK. lua-cjson and llhttp are
# compiled into the binary. scripts/rootfs-check.sh runs the runtime stage's steps in a debootstrap
# root where no Docker engine is available.
ARG DEBIAN_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------
FROM ${DEBIAN_IMAGE} AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      cmake make gcc libc6-dev pkg-config \
      libluajit-5.1-dev libuv1-dev node-llhttp lua-cjson-dev \
      libmbedtls-dev libcurl4-openssl-dev libpcre2-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY runtime/ runtime/
COPY lua/ lua/
COPY plugins/ plugins/
COPY config/ config/
# installed under /usr/local: the binary finds its Lua tree as <bin>/../share/moongate
RUN cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DMOONGATE_TESTS=OFF -DCMAKE_INSTALL_PREFIX=/usr/local \
 && cmake --build build -j"$(nproc)" \
 && DESTDIR=/out cmake --install build \
 && /out/usr/local/bin/moongate version

# ---------------------------------------------------------------------------------------------
FROM ${DEBIAN_IMAGE} AS runtime
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libluajit-5.1-2 libuv1 libcurl4 libmbedtls14 libmbedx509-1 libmbedcrypto7 libpcre2-8-0 \
      ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 moongate \
 && useradd --uid 10001 --gid 10001 --home-dir /var/lib/moongate --no-create-home \
      --shell /usr/sbin/nologin moongate \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/moongate \
 && install -d -m 0755 /etc/moongate
COPY --from=build /out/usr/local/ /usr/local/
COPY examples/docker/gateway.lua /etc/moongate/gateway.lua
# numeric, so that Kubernetes' runAsNonRoot can check it
USER 10001:10001
WORKDIR /var/lib/moongate
VOLUME ["/var/lib/moongate"]
# 8080: clients; 9901: admin (/health, /ready, /metrics, /admin/*), on 0.0.0.0 in the image's config
EXPOSE 8080 9901
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:9901/health"]
ENTRYPOINT ["/usr/local/bin/moongate"]
CMD ["-c", "/etc/moongate/gateway.lua"]
