"""What every Kafka node of the stack runs on: a Java 17+ and Kafka's jars from Maven Central."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from workers.stack.apt import apt_install
from workers.stack.commands import run_command
from workers.stack.errors import StackError
from workers.stack.service import Echo

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.1.1"
SCALA_VERSION = "2.13"
SLF4J_VERSION = "2.0.17"
MINIMUM_JAVA = 17
JAVA_PACKAGE = "openjdk-17-jre-headless"

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="http://maven.apache.org/POM/4.0.0
                             https://maven.apache.org/xsd/maven-4.0.0.xsd">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.workers.stack</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{scala}</artifactId>
      <version>{kafka}</version>
    </dependency>
    <!-- Pinned: the Kafka POM brings slf4j-api 1.7, which does not see a 2.x binding. -->
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-api</artifactId>
      <version>{slf4j}</version>
    </dependency>
    <dependency>
      <groupId>org.slf4j</groupId>
      <artifactId>slf4j-simple</artifactId>
      <version>{slf4j}</version>
    </dependency>
  </dependencies>
</project>
"""


def find_java() -> str:
    """A `java` of version 17 or newer, or a `StackError` naming the package to install."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = str(Path(java_home) / "bin" / "java") if java_home else shutil.which("java")
    if not candidate or not Path(candidate).exists():
        raise StackError(
            f"Kafka needs Java {MINIMUM_JAVA} or newer and no `java` was found; "
            f"install it with: apt-get install -y {JAVA_PACKAGE}"
        )
    output = run_command([candidate, "-version"], what="java -version", timeout=60)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', output)
    if match is None:
        raise StackError(f"cannot tell the version of {candidate} from: {output.strip()!r}")
    major = int(match[1])
    if major == 1 and match[2]:  # "1.8.0_392" is Java 8.
        major = int(match[2])
    if major < MINIMUM_JAVA:
        raise StackError(
            f"Kafka {KAFKA_VERSION} needs Java {MINIMUM_JAVA} or newer, {candidate} is Java "
            f"{major}; install it with: apt-get install -y {JAVA_PACKAGE}"
        )
    return candidate


def classpath(libs: Path) -> str:
    return str(libs / "*")


def ensure_jars(libs: Path, echo: Echo) -> None:
    """Resolve Kafka's jars into `libs` with Maven, once (a marker records the versions)."""
    marker = libs / ".resolved"
    wanted = f"org.apache.kafka:kafka_{SCALA_VERSION}:{KAFKA_VERSION} slf4j:{SLF4J_VERSION}\n"
    try:
        if marker.read_text() == wanted:
            return
    except FileNotFoundError:
        pass
    mvn = shutil.which("mvn")
    if mvn is None:
        apt_install(["maven"], needed_for="downloading Kafka's jars", echo=echo)
        mvn = shutil.which("mvn")
        if mvn is None:
            raise StackError("the Debian package maven is installed but `mvn` is not on PATH")
    echo(f"kafka: downloading Kafka {KAFKA_VERSION} jars from Maven Central (first run only)")
    started = time.monotonic()
    libs.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".resolve-", dir=libs.parent) as scratch:
        pom = Path(scratch) / "pom.xml"
        pom.write_text(_POM.format(scala=SCALA_VERSION, kafka=KAFKA_VERSION, slf4j=SLF4J_VERSION))
        output = Path(scratch) / "libs"
        run_command(
            [
                mvn,
                "-B",
                "-q",
                "-f",
                str(pom),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={output}",
                "-DincludeScope=runtime",
            ],
            what="resolving Kafka's jars with Maven",
            timeout=1800,
            cwd=Path(scratch),
        )
        jars = sorted(jar.name for jar in output.glob("*.jar"))
        if f"kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar" not in jars:
            raise StackError(
                f"Maven finished but kafka_{SCALA_VERSION}-{KAFKA_VERSION}.jar is missing"
            )
        stale_api = [
            jar for jar in jars if jar.startswith("slf4j-api-") and SLF4J_VERSION not in jar
        ]
        if stale_api:
            raise StackError(f"Maven resolved a second slf4j-api: {', '.join(stale_api)}")
        (output / ".resolved").write_text(wanted)
        if libs.exists():
            shutil.rmtree(libs)
        output.rename(libs)
    log.info("resolved %d jars in %.1f s", len(jars), time.monotonic() - started)
