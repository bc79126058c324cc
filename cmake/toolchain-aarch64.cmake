# Cross build for aarch64 Linux on a Debian x86-64 host (scripts/cross_arm64.sh): Debian's
# aarch64-linux-gnu GCC, the arm64 libraries installed multiarch (dpkg --add-architecture arm64:
# libraries in /usr/lib/aarch64-linux-gnu, headers shared in /usr/include), and the tests run
# under qemu-user on those same multiarch libraries.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
# find_library / find_package look in <prefix>/lib/aarch64-linux-gnu, not the host's x86_64 one.
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
# pkg-config (PCRE2, ICU, cpp-httplib) reads the arm64 .pc files only.
set(ENV{PKG_CONFIG_LIBDIR} /usr/lib/aarch64-linux-gnu/pkgconfig:/usr/share/pkgconfig)
set(ENV{PKG_CONFIG_PATH} "")
# ctest (and gtest_discover_tests) run the test binaries through this. The sysroot is / (the
# multiarch libc6:arm64, whose ld.so is /lib/ld-linux-aarch64.so.1), not the cross toolchain's
# /usr/aarch64-linux-gnu: from there ld.so comes from libc6-arm64-cross while libc.so.6 is still
# found in /lib/aarch64-linux-gnu, two glibc builds that must not mix (pthread_create hung).
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64 -L /)
