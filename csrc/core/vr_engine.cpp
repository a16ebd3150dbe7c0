// Explicit instantiations of the torch-free engine, so that the core compiles (and is linted
// and sanitized) once as an ordinary library, independent of torch and of any test.
#include "vr_engine.h"

#include "pairwise_distance.h"

namespace tsl {

template void vr_persistence_cloud<float, SerialChunks>(const float*, index_t, int,
                                                        CloudOutput<float>, HostWorkspace<float>&,
                                                        index_t, const SerialChunks&);
template void vr_persistence_cloud<double, SerialChunks>(const double*, index_t, int,
                                                         CloudOutput<double>,
                                                         HostWorkspace<double>&, index_t,
                                                         const SerialChunks&);
template void pairwise_distance_cloud<float>(const float*, index_t, index_t, float*);
template void pairwise_distance_cloud<double>(const double*, index_t, index_t, double*);

}  // namespace tsl
