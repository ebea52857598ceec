# What cmake --install puts under the prefix: bin/ddprun and bin/ddptrain, lib/libddprun.so, include/ddprun/*.h,
# lib/cmake/ddprun (ddprunConfig.cmake, so that find_package(ddprun) gives ddprun::ddprun), and share/ddprun (the
# Slurm templates, the local Slurm cluster script, the metrics plotter).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)
set(DDPRUN_SHARE_DIR ${CMAKE_INSTALL_DATADIR}/ddprun)
set(DDPRUN_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/ddprun)

install(TARGETS ddprun ddptrain RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(TARGETS ddprun_library EXPORT ddprunTargets LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/ddprun DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES ${PROJECT_SOURCE_DIR}/scripts/slurm/single-node.sbatch ${PROJECT_SOURCE_DIR}/scripts/slurm/multi-node.sbatch
        DESTINATION ${DDPRUN_SHARE_DIR}/slurm)
install(PROGRAMS ${PROJECT_SOURCE_DIR}/scripts/slurm/local-cluster.sh DESTINATION ${DDPRUN_SHARE_DIR}/slurm)
install(PROGRAMS ${PROJECT_SOURCE_DIR}/scripts/plot_metrics.py DESTINATION ${DDPRUN_SHARE_DIR})
install(EXPORT ddprunTargets NAMESPACE ddprun:: DESTINATION ${DDPRUN_CMAKE_DIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/ddprunConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/ddprunConfig.cmake INSTALL_DESTINATION ${DDPRUN_CMAKE_DIR}
                              PATH_VARS CMAKE_INSTALL_BINDIR DDPRUN_SHARE_DIR)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/ddprunConfigVersion.cmake COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/ddprunConfig.cmake ${PROJECT_BINARY_DIR}/ddprunConfigVersion.cmake
        DESTINATION ${DDPRUN_CMAKE_DIR})
